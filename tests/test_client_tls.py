"""Tests for L{relaygate.client_tls}: the client-TLS gate, driven without a TLS connection.

Real handshakes, certificate refusals and the fronts' replies are in test_imap_pop3_tls and
test_smtp_tls; these pin the gate's own decisions.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relaygate.client_tls import AfterHandshake, ClientTLSGate
from relaygate.config.server import ListenConfig
from relaygate.listeners import new_server_tls
from relaygate.tls.server import ServerTLS
from tests.fronts import listener, make_config, server_tls_config


class _TLSTransport(StringTransport):
    """Records C{startTLS}; never really switches."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[object] = []

    def startTLS(self, creator: object) -> None:
        self.started.append(creator)


class GateTests(SynchronousTestCase):
    """What the gate offers, times and decides."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[bool] = []

    def server_tls(self, mode: str) -> ServerTLS:
        config = make_config(tls=server_tls_config(self.mktemp()))
        listen: ListenConfig = listener(mode)
        server_tls = new_server_tls(listen, config)
        assert server_tls is not None
        return server_tls

    def gate(self, mode: str, server_tls: ServerTLS | None = None) -> ClientTLSGate:
        if server_tls is None and mode != "none":
            server_tls = self.server_tls(mode)
        return ClientTLSGate(
            self.clock, "imap", mode, server_tls, lambda: self.expired.append(True)
        )

    def test_offers_starttls(self) -> None:
        """STARTTLS is on offer on starttls listeners until TLS is up; never elsewhere."""
        self.assertFalse(self.gate("none").offers_starttls())
        self.assertFalse(self.gate("implicit").offers_starttls())
        gate = self.gate("starttls-required")
        self.assertTrue(gate.offers_starttls())
        self.assertTrue(gate.required)
        gate.start_tls(_TLSTransport(), 0, "192.0.2.7")
        self.assertEqual(gate.completed(StringTransport(), "192.0.2.7"), AfterHandshake.READ)
        self.assertFalse(gate.offers_starttls())
        self.assertTrue(gate.listener_offers_starttls())
        self.assertFalse(gate.required)
        self.assertTrue(gate.secure)

    def test_start_tls_logs_discarded_plaintext(self) -> None:
        """Pipelined plaintext is logged as discarded; the transport starts TLS."""
        server_tls = self.server_tls("starttls")
        gate = self.gate("starttls", server_tls)
        transport = _TLSTransport()
        events: Sequence[LogEvent]
        with capturedLogs() as events:
            gate.start_tls(transport, 12, "192.0.2.7")
        self.assertEqual(transport.started, [server_tls])
        [event] = [e for e in events if "pipelined" in e["log_format"]]
        self.assertEqual((event["count"], event["client"]), (12, "192.0.2.7"))
        self.assertTrue(gate.handshaking)

    def test_handshake_timeout(self) -> None:
        """A handshake that is not done within handshake_timeout calls C{expired}."""
        gate = self.gate("implicit")
        gate.await_handshake()
        timeout = self.server_tls("implicit").handshake_timeout
        self.clock.advance(timeout - 0.001)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.expired, [True])

    def test_completed_handshake_stops_the_timer(self) -> None:
        """Implicit TLS greets once the handshake is done; the timer no longer fires."""
        gate = self.gate("implicit")
        gate.await_handshake()
        self.assertEqual(gate.completed(StringTransport(), "192.0.2.7"), AfterHandshake.GREET)
        self.clock.advance(3600)
        self.assertEqual(self.expired, [])
        self.assertIsNone(gate.pending)
        self.assertEqual(gate.summary(), "")
        self.assertFalse(gate.has_verified_certificate())

    def test_completed_without_handshake_ignored(self) -> None:
        """A handshake the gate did not start is ignored."""
        self.assertEqual(
            self.gate("starttls").completed(StringTransport(), "192.0.2.7"),
            AfterHandshake.IGNORED,
        )

    def test_stop(self) -> None:
        """Stopping the gate (the connection closes) cancels the timer."""
        gate = self.gate("implicit")
        gate.await_handshake()
        gate.stop()
        self.clock.advance(3600)
        self.assertEqual(self.expired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
