"""Tests for L{relaygate.smtp.backend_pool} and the backend leg's use of it: a backend
connection that knows nothing of its client serves the next session on its route."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaygate.smtp.backend import SMTPBackendClient
from relaygate.smtp.backend_pool import MAX_IDLE_PER_ROUTE, BackendPool
from tests.peers import start_backend, start_relay
from tests.smtp_harness import BACKEND, BackendEnd, FrontHarness, make_config
from tests.test_smtp_relay import (
    MESSAGE,
    R_QUEUED,
    R_RCPT_OK,
    R_SENDER_OK,
    config_text,
    transaction,
)
from tests.test_smtp_relay import route as route_section
from tests.test_smtp_submission import PLAIN, authed, submission_config

ROUTE = ((BACKEND,), "none")


def open_backend(clock: Clock) -> tuple[SMTPBackendClient, StringTransport]:
    """A greeted backend connection on a StringTransport, made at C{clock}'s time."""
    backend = SMTPBackendClient(b"gw.test", clock, 300.0)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 2500))
    backend.makeConnection(transport)
    backend.dataReceived(b"220 backend ESMTP\r\n")
    return backend, transport


class BackendPoolTests(SynchronousTestCase):
    """The pool keeps, hands out and expires idle connections."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = BackendPool(self.clock, idle=2.0, max_age=300.0)

    def test_takes_the_last_kept_first(self) -> None:
        """Connections come back newest first, each once, then None."""
        first, _ = open_backend(self.clock)
        second, _ = open_backend(self.clock)
        self.assertTrue(self.pool.give(ROUTE, first))
        self.assertTrue(self.pool.give(ROUTE, second))
        self.assertIs(self.pool.take(ROUTE), second)
        self.assertIs(self.pool.take(ROUTE), first)
        self.assertIsNone(self.pool.take(ROUTE))
        self.assertIsNone(self.pool.take(((BACKEND,), "required")))
        self.assertEqual(len(self.pool), 0)

    def test_idle_too_long_gets_quit(self) -> None:
        """After C{idle} seconds a kept connection is sent QUIT and no longer handed out."""
        backend, transport = open_backend(self.clock)
        self.pool.give(ROUTE, backend)
        transport.clear()
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(transport.value(), b"QUIT\r\n")
        self.assertIsNone(self.pool.take(ROUTE))

    def test_each_expires_after_its_own_idle_time(self) -> None:
        """Connections kept at different times, on two routes, each get QUIT C{idle} seconds
        after they were kept, one pool timer pending at a time."""
        other = ((BACKEND,), "required")
        a, a_wire = open_backend(self.clock)
        b, b_wire = open_backend(self.clock)
        c, c_wire = open_backend(self.clock)
        self.pool.give(ROUTE, a)
        self.clock.advance(0.5)
        self.pool.give(other, b)
        self.clock.advance(0.5)
        self.pool.give(ROUTE, c)
        for wire in (a_wire, b_wire, c_wire):
            wire.clear()
        quits = []
        for _ in range(4):
            self.clock.advance(0.5)
            quits.append(tuple(w.value() == b"QUIT\r\n" for w in (a_wire, b_wire, c_wire)))
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1 + 3)
        # t = 1.5, 2.0, 2.5, 3.0: a (kept at 0) goes at 2, b (0.5) at 2.5, c (1) at 3.
        self.assertEqual(
            quits,
            [
                (False, False, False),
                (True, False, False),
                (True, True, False),
                (True, True, True),
            ],
        )
        self.assertEqual(len(self.pool), 0)

    def test_sessions_arm_no_timer_each(self) -> None:
        """Keeping and taking back a connection session after session arms no new timer."""
        backend, _ = open_backend(self.clock)
        self.pool.give(ROUTE, backend)
        pool_timers = set(self.clock.getDelayedCalls())
        for _ in range(20):
            self.clock.advance(0.01)
            self.assertIs(self.pool.take(ROUTE), backend)
            self.assertTrue(self.pool.give(ROUTE, backend))
        self.assertEqual(set(self.clock.getDelayedCalls()), pool_timers)

    def test_taken_connection_does_not_expire(self) -> None:
        """A connection taken back is no longer timed by the pool."""
        backend, transport = open_backend(self.clock)
        self.pool.give(ROUTE, backend)
        self.assertIs(self.pool.take(ROUTE), backend)
        transport.clear()
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"")

    def test_closed_meanwhile_is_skipped(self) -> None:
        """A connection the backend closed while kept is never handed out."""
        gone, _ = open_backend(self.clock)
        self.pool.give(ROUTE, gone)
        gone.connectionLost(Failure(ConnectionError("closed by the backend")))
        self.assertIsNone(self.pool.take(ROUTE))
        self.assertEqual(len(self.pool), 0)
        # The pool's sweep comes once more, finds nothing and is not armed again.
        self.clock.advance(10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_old_connection_is_not_kept(self) -> None:
        """A connection older than C{max_age} is refused (the caller closes it)."""
        backend, _ = open_backend(self.clock)
        self.clock.advance(300.0)
        self.assertFalse(self.pool.give(ROUTE, backend))
        self.assertIsNone(self.pool.take(ROUTE))

    def test_at_most_so_many_per_route(self) -> None:
        """Past L{MAX_IDLE_PER_ROUTE} a route keeps no more."""
        for _ in range(MAX_IDLE_PER_ROUTE):
            self.assertTrue(self.pool.give(ROUTE, open_backend(self.clock)[0]))
        self.assertFalse(self.pool.give(ROUTE, open_backend(self.clock)[0]))
        self.assertEqual(len(self.pool), MAX_IDLE_PER_ROUTE)

    def test_close_quits_everything_and_keeps_nothing(self) -> None:
        """Closing the pool says QUIT on every kept connection and refuses new ones."""
        backend, transport = open_backend(self.clock)
        self.pool.give(ROUTE, backend)
        transport.clear()
        self.pool.close()
        self.assertEqual(transport.value(), b"QUIT\r\n")
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"QUIT\r\n")
        self.assertFalse(self.pool.enabled)
        self.assertFalse(self.pool.give(ROUTE, open_backend(self.clock)[0]))

    def test_zero_keeps_nothing(self) -> None:
        """C{idle = 0} turns the pool off."""
        pool = BackendPool(self.clock, idle=0.0, max_age=300.0)
        self.assertFalse(pool.enabled)
        self.assertFalse(pool.give(ROUTE, open_backend(self.clock)[0]))


def deliver(harness: FrontHarness, backend_replies: bool = True) -> None:
    """Client: DATA, a one-line body, the dot; the backend's 354 and 250 when asked."""
    harness.send(b"DATA\r\n")
    backend = harness.backends[-1]
    if backend_replies:
        backend.reply(b"354 go ahead\r\n")
    harness.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    if backend_replies:
        backend.reply(b"250 2.0.0 Ok: queued\r\n")


def next_session(harness: FrontHarness) -> FrontHarness:
    """A second client session on the same listener (factory, reactor and router)."""
    second = FrontHarness.__new__(FrontHarness)
    second.reactor = harness.reactor
    second.router = harness.router
    second.factory = harness.factory
    second.backends = harness.backends
    peer = IPv4Address("TCP", "127.0.0.1", 40001)
    second.front = harness.factory.buildProtocol(peer)
    second.client = StringTransport(
        peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 2525)
    )
    second.front.makeConnection(second.client)
    return second


class KeptConnectionTests(SynchronousTestCase):
    """A session ending clean leaves its backend connection to the next one on its route."""

    def finished_session(self, **smtp: object) -> FrontHarness:
        """One delivered message and QUIT; the backend's bytes so far are read."""
        harness = FrontHarness(make_config(**smtp))
        backend = harness.open_transaction()
        deliver(harness)
        harness.send(b"QUIT\r\n")
        harness.front.connectionLost(Failure(ConnectionError("client closed")))
        self.assertEqual(
            backend.received(), b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n", "unexpected bytes"
        )
        return harness

    def assert_quit_at_the_end(self, harness: FrontHarness, backend: BackendEnd) -> None:
        """Deliver a message and QUIT: the backend gets QUIT and the pool keeps nothing."""
        deliver(harness)
        backend.received()
        harness.send(b"QUIT\r\n")
        harness.front.connectionLost(Failure(ConnectionError("client closed")))
        self.assertEqual(backend.received(), b"QUIT\r\n")
        self.assertEqual(len(harness.factory.backend_pool), 0)

    def test_next_session_carries_on_the_connection(self) -> None:
        """No connect, greeting, EHLO or QUIT: the next session's MAIL and RCPT go straight on."""
        first = self.finished_session()
        backend = first.backends[0]
        second = next_session(first)
        second.send(b"EHLO other.test\r\nMAIL FROM:<b@example.net>\r\nRCPT TO:<c@example.org>\r\n")
        self.assertEqual(len(first.reactor.tcpClients), 1)
        self.assertEqual(
            backend.received(), b"MAIL FROM:<b@example.net>\r\nRCPT TO:<c@example.org>\r\n"
        )
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assertTrue(second.replies().endswith(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"))
        deliver(second)
        self.assertTrue(second.replies().endswith(b"354 go ahead\r\n250 2.0.0 Ok: queued\r\n"))

    def test_kept_connection_idle_too_long_gets_quit(self) -> None:
        """After C{backend_connection_cache} seconds the kept connection says QUIT."""
        first = self.finished_session(backend_connection_cache=5.0)
        first.reactor.advance(4.9)
        self.assertEqual(first.backends[0].received(), b"")
        first.reactor.advance(0.1)
        self.assertEqual(first.backends[0].received(), b"QUIT\r\n")

    def test_cache_off_says_quit_at_once(self) -> None:
        """C{backend_connection_cache = 0}: the session's end says QUIT, as without a pool."""
        harness = FrontHarness(make_config(backend_connection_cache=0))
        backend = harness.open_transaction()
        deliver(harness)
        harness.send(b"QUIT\r\n")
        harness.front.connectionLost(Failure(ConnectionError("client closed")))
        self.assertTrue(backend.received().endswith(b".\r\nQUIT\r\n"))

    def test_listener_stop_quits_kept_connections(self) -> None:
        """A drain, a reload or the end of the process closes the kept connections politely."""
        first = self.finished_session()
        first.factory.doStart()
        first.factory.doStop()
        self.assertEqual(first.backends[0].received(), b"QUIT\r\n")

    def test_abandoned_transaction_is_not_kept(self) -> None:
        """A client leaving with MAIL and RCPT open: QUIT, and the next session connects anew."""
        harness = FrontHarness()
        backend = harness.open_transaction()
        harness.front.connectionLost(Failure(ConnectionError("client reset")))
        self.assertEqual(backend.received(), b"QUIT\r\n")
        second = next_session(harness)
        second.send(b"EHLO other.test\r\nMAIL FROM:<b@example.net>\r\nRCPT TO:<c@example.org>\r\n")
        self.assertEqual(len(harness.reactor.tcpClients), 2)

    def test_xclient_connection_is_not_kept(self) -> None:
        """A connection that was told who the client is (XCLIENT) is never handed to another."""
        harness = FrontHarness(make_config(xclient=True))
        harness.send(
            b"EHLO client.test\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n"
        )
        backend = harness.connect_backend()
        backend.reply(
            b"250-backend\r\n250-XCLIENT ADDR PORT NAME PROTO HELO\r\n250 PIPELINING\r\n"
        )
        self.assertTrue(backend.received().startswith(b"EHLO gw.test\r\nXCLIENT "))
        backend.reply(b"220 backend ESMTP\r\n")
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assert_quit_at_the_end(harness, backend)

    def test_proxy_protocol_connection_is_not_kept(self) -> None:
        """A connection that began with the client's PROXY header serves that client only."""
        harness = FrontHarness(make_config(backend_proxy_protocol="v1"))
        harness.send(
            b"EHLO client.test\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n"
        )
        backend = harness.connect_backend()
        self.assertEqual(
            backend.received(), b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 2525\r\nEHLO gw.test\r\n"
        )
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assert_quit_at_the_end(harness, backend)

    def test_backend_login_connection_is_not_kept(self) -> None:
        """A connection logged in at the backend as one user (backend_auth = "plain") never
        serves another session."""
        harness = authed(submission_config(backend_auth="plain"))
        harness.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        backend = harness.connect_backend()
        backend.reply(b"250-backend\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(backend.received(), b"EHLO gw.test\r\nAUTH PLAIN " + PLAIN + b"\r\n")
        backend.reply(b"235 2.7.0 ok\r\n")
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assert_quit_at_the_end(harness, backend)

    def test_kept_connection_lost_at_mail_connects_anew(self) -> None:
        """The backend hung up a kept connection as MAIL went out: the transaction starts again
        on a new connection, and the client sees only that one's replies."""
        first = self.finished_session()
        kept = first.backends[0]
        second = next_session(first)
        with capturedLogs() as events:
            second.send(
                b"EHLO other.test\r\nMAIL FROM:<b@example.net>\r\nRCPT TO:<c@example.org>\r\n"
            )
            kept.protocol.connectionLost(Failure(ConnectionError("reset by the backend")))
        self.assertEqual(len(first.reactor.tcpClients), 2)
        fresh = first.connect_backend()
        self.assertEqual(fresh.received(), b"EHLO gw.test\r\n")
        fresh.reply(b"250-backend\r\n250 PIPELINING\r\n")
        self.assertEqual(
            fresh.received(), b"MAIL FROM:<b@example.net>\r\nRCPT TO:<c@example.org>\r\n"
        )
        fresh.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assertTrue(second.replies().endswith(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"))
        self.assertEqual(
            [e["log_format"] for e in events if "connecting anew" in e["log_format"]],
            ["kept connection to {backend} was gone ({error}); connecting anew"],
        )

    def test_kept_connection_closed_while_idle_is_not_used(self) -> None:
        """A kept connection the backend closed while it waited is skipped: a new one is made."""
        first = self.finished_session()
        first.backends[0].protocol.connectionLost(Failure(ConnectionError("closed")))
        second = next_session(first)
        second.send(b"EHLO other.test\r\nMAIL FROM:<b@example.net>\r\nRCPT TO:<c@example.org>\r\n")
        self.assertEqual(len(first.reactor.tcpClients), 2)

    def test_final_reply_after_the_client_left_keeps_the_connection(self) -> None:
        """A client gone while its final dot waited: the backend's 250 ends the transaction
        and the clean connection is kept."""
        harness = FrontHarness()
        backend = harness.open_transaction()
        deliver(harness, backend_replies=False)
        backend.reply(b"354 go ahead\r\n")
        harness.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        harness.front.connectionLost(Failure(ConnectionError("client gone")))
        backend.received()
        backend.reply(b"250 2.0.0 Ok: queued\r\n")
        self.assertEqual(backend.received(), b"")
        self.assertEqual(len(harness.factory.backend_pool), 1)


class KeptConnectionLoopbackTests(TestCase):
    """Through the real service tree and a real backend over loopback."""

    async def test_three_sessions_one_backend_connection(self) -> None:
        """Three smtplib sessions in a row: one backend connection, one EHLO, three messages;
        stopping the service says QUIT to the backend."""
        backend = await start_backend(self)
        relay = await start_relay(self, config_text(route_section("*", backend.port)))
        for _ in range(3):
            replies = await deferToThread(
                transaction, relay.port, "alice@client.test", ["bob@x.example"], MESSAGE
            )
            self.assertEqual(replies, [R_SENDER_OK, R_RCPT_OK, R_QUEUED])
        self.assertEqual(len(backend.sessions), 1)
        commands = backend.sessions[0].commands
        self.assertEqual(commands.count(b"EHLO gw.test"), 1)
        self.assertEqual(len([c for c in commands if c.startswith(b"MAIL")]), 3)
        self.assertNotIn(b"QUIT", commands)
        self.assertEqual(len(backend.messages), 3)
        await relay.service.stopService()
        await backend.sessions[0].closed
        self.assertEqual(backend.sessions[0].commands[-1], b"QUIT")
