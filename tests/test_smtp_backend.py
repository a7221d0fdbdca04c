"""Tests for L{relaygate.smtp.backend}: the reply timer and the write path of the backend leg."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.backend.errors import BackendLost
from relaygate.smtp.backend import SMTPBackendClient
from relaygate.smtp.replies import Reply


def _connected(timeout: float = 10.0) -> tuple[SMTPBackendClient, StringTransport, Clock]:
    clock = Clock()
    client = SMTPBackendClient(b"gw.test", clock, timeout)
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(b"220 backend ESMTP\r\n")
    return client, transport, clock


class ReplyTimerTests(SynchronousTestCase):
    """One timer per connection; a reply is due within the timeout of the last activity."""

    def test_one_timer_for_many_commands(self) -> None:
        """Commands and replies move the deadline; they never add or cancel timers."""
        client, transport, clock = _connected()
        [timer] = clock.getDelayedCalls()
        for line in (b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>", b"NOOP"):
            reply = client.command(line)
            client.dataReceived(b"250 2.0.0 Ok\r\n")
            self.assertEqual(self.successResultOf(reply), Reply(250, (b"2.0.0 Ok",)))
        self.assertEqual(clock.getDelayedCalls(), [timer])
        self.assertEqual(
            transport.value(),
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nNOOP\r\n",
        )

    def test_silence_while_waiting_times_out(self) -> None:
        """No reply within the timeout of the command: BackendLost, connection aborted."""
        client, transport, clock = _connected(timeout=10.0)
        clock.advance(100.0)  # idle between commands: nothing is due
        reply = client.command(b"DATA")
        clock.advance(9.9)
        self.assertNoResult(reply)
        clock.advance(0.1)
        self.failureResultOf(reply, BackendLost)
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_each_line_restarts_the_wait(self) -> None:
        """A multi-line reply that keeps coming is not cut off by the first line's deadline."""
        client, _, clock = _connected(timeout=10.0)
        reply = client.command(b"EHLO gw.test")
        clock.advance(9.0)
        client.dataReceived(b"250-backend\r\n")
        clock.advance(9.0)
        self.assertNoResult(reply)
        client.dataReceived(b"250 PIPELINING\r\n")
        self.assertEqual(self.successResultOf(reply).code, 250)
        clock.advance(60.0)
        self.assertTrue(client.is_open)

    def test_timer_gone_with_the_connection(self) -> None:
        """A closed connection leaves no timer behind."""
        client, _, clock = _connected()
        reply = client.command(b"QUIT")
        client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(reply, BackendLost)
        self.assertEqual(clock.getDelayedCalls(), [])


class AttributeTests(SynchronousTestCase):
    """Attribute writes skip ESMTPClient's deprecation hook, and still land."""

    def test_plain_attribute_writes(self) -> None:
        """The line buffer and reply state are ordinary attributes."""
        client, _, _ = _connected()
        self.assertIs(type(client).__setattr__, object.__setattr__)
        client.dataReceived(b"250-partial")
        self.assertEqual(client._buffer, b"250-partial")  # type: ignore[attr-defined]
