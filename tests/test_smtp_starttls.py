"""Unit tests for L{relaygate.smtp.starttls}: SMTP's answers to STARTTLS, from the shared gate.

The gate's own decisions (offers, timer, certificate verdicts) are in test_client_tls; the SMTP
front's use of them, with exact bytes, in test_smtp_tls.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaygate.client_tls import ClientTLSGate
from relaygate.smtp.replies import R_NOT_AVAILABLE, R_STARTTLS_SYNTAX, R_TLS_ACTIVE
from relaygate.smtp.starttls import starttls_refusal
from relaygate.tls.handshake import HandshakeResult
from relaygate.tls.server import ServerTLS


class _Context:
    """Stands in for a listener's L{ServerTLS}: the gate reads only its handshake limit."""

    handshake_timeout = 10.0


SERVER_TLS = cast(ServerTLS, _Context())


class _TLSTransport(StringTransport):
    """Records that TLS was started."""

    started = False

    def startTLS(self, creator: object) -> None:
        self.started = True


def gate(mode: str) -> ClientTLSGate:
    """A gate for an SMTP listener with C{tls = mode}."""
    return ClientTLSGate(
        Clock(), "smtp", mode, SERVER_TLS if mode != "none" else None, lambda: None
    )


class StartTLSRefusalTests(SynchronousTestCase):
    """How STARTTLS is answered, per listener mode and TLS state."""

    def test_not_offered(self) -> None:
        """Listeners without STARTTLS say 502; implicit TLS (already secure) says 554."""
        self.assertEqual(starttls_refusal(gate("none"), b""), R_NOT_AVAILABLE)
        implicit = gate("implicit")
        implicit.await_handshake()
        implicit.completed(StringTransport(), "192.0.2.1:4")
        self.assertEqual(starttls_refusal(implicit, b""), R_TLS_ACTIVE)

    def test_starttls_listener(self) -> None:
        """STARTTLS may start once; with an argument it is a syntax error."""
        for mode in ("starttls", "starttls-required"):
            tls = gate(mode)
            self.assertIsNone(starttls_refusal(tls, b""))
            self.assertEqual(starttls_refusal(tls, b"now"), R_STARTTLS_SYNTAX)

    def test_starting_or_active(self) -> None:
        """During the handshake and after it, STARTTLS is refused as already active."""
        tls = gate("starttls")
        transport = _TLSTransport()
        tls.start_tls(transport, None, "192.0.2.1:4")
        self.assertTrue(transport.started)
        self.assertEqual(starttls_refusal(tls, b""), R_TLS_ACTIVE)
        tls.completed(StringTransport(), "192.0.2.1:4")
        self.assertEqual(starttls_refusal(tls, b""), R_TLS_ACTIVE)

    def test_certificate_refusal_bytes(self) -> None:
        """SMTP's certificate refusals are nginx's 421 lines."""
        tls = gate("implicit")
        tls.result = HandshakeResult(None, "no_cert")
        self.assertEqual(tls.refusal(), b"421 4.7.1 No required SSL certificate\r\n")
