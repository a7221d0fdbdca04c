"""Unit tests for L{relaygate.smtp.client_tls}: the client-side TLS gate's decisions, alone."""

from __future__ import annotations

from typing import cast

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.observe import SessionRecord
from relaygate.smtp.client_tls import ClientTLSGate
from relaygate.smtp.replies import R_NOT_AVAILABLE, R_STARTTLS_SYNTAX, R_TLS_ACTIVE
from relaygate.tls.server import ServerTLS


class _Context:
    """Stands in for a listener's L{ServerTLS}: the gate reads only its handshake limit."""

    handshake_timeout = 10.0


SERVER_TLS = cast(ServerTLS, _Context())


def gate(mode: str, clock: Clock | None = None) -> tuple[ClientTLSGate, SessionRecord, list[str]]:
    """A gate for a listener with C{tls = mode}, its session record, and its expiry calls."""
    session = SessionRecord(session_id="1", client="192.0.2.1:4", listener="l", started=0.0)
    expired: list[str] = []
    tls = ClientTLSGate(
        mode,
        SERVER_TLS if mode != "none" else None,
        clock or Clock(),
        lambda: session,
        lambda: expired.append("expired"),
    )
    return tls, session, expired


class StartTLSTests(SynchronousTestCase):
    """What EHLO offers and how STARTTLS is answered, per listener mode."""

    def test_starttls_offered_until_secure(self) -> None:
        """starttls and starttls-required offer STARTTLS until TLS is up."""
        for mode in ("starttls", "starttls-required"):
            tls, _, _ = gate(mode)
            self.assertTrue(tls.offers_starttls())
            tls.secure = True
            self.assertFalse(tls.offers_starttls())
        for mode in ("none", "implicit"):
            self.assertFalse(gate(mode)[0].offers_starttls())

    def test_tls_needed_only_before_tls_when_required(self) -> None:
        """starttls-required makes MAIL and AUTH wait for TLS."""
        tls, _, _ = gate("starttls-required")
        self.assertTrue(tls.tls_needed())
        tls.secure = True
        self.assertFalse(tls.tls_needed())
        self.assertFalse(gate("starttls")[0].tls_needed())

    def test_starttls_refusals(self) -> None:
        """Not offered, already active or starting, or with an argument: each its reply."""
        self.assertEqual(gate("none")[0].starttls_refusal(b"", False), R_NOT_AVAILABLE)
        tls, _, _ = gate("starttls")
        self.assertIsNone(tls.starttls_refusal(b"", False))
        self.assertEqual(tls.starttls_refusal(b"now", False), R_STARTTLS_SYNTAX)
        self.assertEqual(tls.starttls_refusal(b"", True), R_TLS_ACTIVE)
        tls.secure = True
        self.assertEqual(tls.starttls_refusal(b"", False), R_TLS_ACTIVE)

    def test_certificate_refusal_bytes(self) -> None:
        """The refusal is nginx's 421 line for the problem."""
        self.assertEqual(
            ClientTLSGate.refusal("no_cert"), b"421 4.7.1 No required SSL certificate\r\n"
        )


class HandshakeTimerTests(SynchronousTestCase):
    """The handshake's time limit."""

    def test_expiry_is_recorded_then_reported(self) -> None:
        """A handshake not done in time ends the session with its reason."""
        clock = Clock()
        tls, session, expired = gate("implicit", clock)
        self.assertTrue(tls.implicit)
        tls.start_timer()
        clock.advance(9.9)
        self.assertEqual(expired, [])
        clock.advance(0.1)
        self.assertEqual(expired, ["expired"])
        self.assertEqual(session.end, "TLS handshake timeout")

    def test_stopped_timer_never_fires(self) -> None:
        """stop_timer() (the connection went) cancels the limit."""
        clock = Clock()
        tls, _, expired = gate("starttls", clock)
        tls.start_timer()
        tls.stop_timer()
        clock.advance(60)
        self.assertEqual(expired, [])
        self.assertEqual(clock.getDelayedCalls(), [])
