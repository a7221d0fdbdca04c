"""Tests for L{relaygate.login.line_client}: the IMAP/POP3 backend connection during login."""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.backend.errors import BackendError, BackendTLSError
from relaygate.login.line_client import LineBackendClient
from relaygate.splice import Splice, SpliceEnd


class _TLSTransport(StringTransport):
    """Records the creator C{startTLS} was called with."""

    creator: object = None

    def startTLS(self, creator: object) -> None:
        self.creator = creator


class LineClientTests(SynchronousTestCase):
    """Reads are one at a time, each bounded by the timeout; TLS drops plaintext leftovers."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = LineBackendClient(self.clock, 30.0, max_line=64)
        self.transport = _TLSTransport()
        self.client.makeConnection(self.transport)

    def test_lines_and_bytes(self) -> None:
        """Lines come without CRLF (or bare LF); byte reads take exactly their count."""
        self.client.dataReceived(b"* OK ready\r\nline two\n{3}abc")
        self.assertEqual(self.successResultOf(self.client.read_line()), b"* OK ready")
        self.assertEqual(self.successResultOf(self.client.read_line()), b"line two")
        self.assertEqual(self.successResultOf(self.client.read_bytes(3)), b"{3}")
        later = self.client.read_bytes(4)
        self.assertNoResult(later)
        self.client.dataReceived(b"d")
        self.assertEqual(self.successResultOf(later), b"abcd")

    def test_one_read_at_a_time(self) -> None:
        """A second read while one waits is a programming error."""
        self.client.read_line()
        self.assertRaises(RuntimeError, self.client.read_line)

    def test_read_times_out(self) -> None:
        """A backend that does not answer within the timeout fails the read."""
        d = self.client.read_line()
        self.clock.advance(30.0)
        self.failureResultOf(d)

    def test_line_too_long(self) -> None:
        """A line over the limit fails the read and drops the connection."""
        d = self.client.read_line()
        self.client.dataReceived(b"x" * 65)
        self.assertIsInstance(self.failureResultOf(d).value, BackendError)
        self.assertTrue(self.transport.disconnecting)

    def test_lost_connection_fails_the_read(self) -> None:
        """The backend going away fails a waiting read, and later ones."""
        d = self.client.read_line()
        self.client.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, ConnectionLost)
        self.failureResultOf(self.client.read_line(), ConnectionLost)

    def test_start_tls_discards_plaintext(self) -> None:
        """Bytes after the OK to STARTTLS are dropped; the handshake's end fires the result."""
        self.client.dataReceived(b"R1 OK Begin TLS\r\n* injected\r\n")
        self.assertEqual(self.successResultOf(self.client.read_line()), b"R1 OK Begin TLS")
        creator = object()
        with capturedLogs() as events:
            handshake = self.client.start_tls(creator)  # type: ignore[arg-type]
        self.assertEqual([e["count"] for e in events], [len(b"* injected\r\n")])
        self.assertIs(self.transport.creator, creator)
        self.assertNoResult(handshake)
        self.client.handshakeCompleted()
        self.successResultOf(handshake)
        self.assertEqual(self.client.tls, "")

    def test_handshake_failure(self) -> None:
        """A connection lost during the handshake fails it with L{BackendTLSError}."""
        handshake = self.client.start_tls(object())  # type: ignore[arg-type]
        self.client.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(handshake, BackendTLSError)

    def test_attach_hands_over_buffered_bytes(self) -> None:
        """After login, what the backend sent early and everything later goes to the client."""
        self.client.dataReceived(b"* OK ready\r\n* early\r\n")
        self.successResultOf(self.client.read_line())
        client_transport = StringTransport()
        ended: list[SpliceEnd] = []
        splice = Splice(client_transport, self.transport, self.clock, 60.0, ended.append)
        self.client.attach(splice)
        self.client.dataReceived(b"* later\r\n")
        self.assertEqual(client_transport.value(), b"* early\r\n* later\r\n")
