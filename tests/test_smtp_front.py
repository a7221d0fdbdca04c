"""Unit tests for L{relaygate.smtp.front}: the greeting, EHLO/HELO, timeouts, MAIL, the
access log and the greeting delay, with exact replies."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.routing.router import Decision, Refuse
from tests.smtp_harness import FrontHarness, make_config


class GreetingAndHelloTests(SynchronousTestCase):
    """The session's opening: greeting, EHLO/HELO and their checks."""

    def test_greeting(self) -> None:
        """The client is greeted with 220 and the configured name."""
        self.assertEqual(FrontHarness().replies(), b"220 gw.test ESMTP\r\n")

    def test_ehlo_lists_configured_extensions(self) -> None:
        """EHLO advertises PIPELINING, SIZE with the limit, 8BITMIME, ENHANCEDSTATUSCODES."""
        h = FrontHarness(make_config(max_message_size=1000))
        h.replies()
        h.send(b"EHLO client.test\r\n")
        self.assertEqual(
            h.replies(),
            b"250-gw.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
            b"250 ENHANCEDSTATUSCODES\r\n",
        )

    def test_extension_list_is_configurable(self) -> None:
        """Only the extensions named in [smtp] extensions are advertised."""
        h = FrontHarness(make_config(extensions=["8BITMIME"]))
        h.replies()
        h.send(b"EHLO client.test\r\n")
        self.assertEqual(h.replies(), b"250-gw.test\r\n250 8BITMIME\r\n")

    def test_helo(self) -> None:
        """HELO answers one line."""
        h = FrontHarness()
        h.replies()
        h.send(b"HELO client.test\r\n")
        self.assertEqual(h.replies(), b"250 gw.test\r\n")

    def test_ehlo_without_name(self) -> None:
        """EHLO needs a name."""
        h = FrontHarness()
        h.replies()
        h.send(b"EHLO\r\n")
        self.assertEqual(h.replies(), b"501 5.5.4 Syntax: EHLO hostname\r\n")

    def test_helo_name_not_visible_ascii(self) -> None:
        """A HELO name with a control byte or a byte past ASCII gets 501, like no name at all."""
        for name in (b"client\x01.test", b"cli\xe9nt.test", b"client\x7f"):
            h = FrontHarness()
            h.replies()
            h.send(b"HELO " + name + b"\r\n")
            self.assertEqual(h.replies(), b"501 5.5.4 Syntax: EHLO hostname\r\n", name)

    def test_local_commands(self) -> None:
        """NOOP, VRFY and HELP are answered by the gateway."""
        h = FrontHarness()
        h.replies()
        h.send(b"NOOP\r\nVRFY bob\r\nHELP\r\n")
        self.assertEqual(
            h.replies(),
            b"250 2.0.0 Ok\r\n"
            b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n"
            b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n",
        )

    def test_quit(self) -> None:
        """QUIT says goodbye and closes."""
        h = FrontHarness()
        h.replies()
        h.send(b"QUIT\r\n")
        self.assertEqual(h.replies(), b"221 2.0.0 gw.test Bye\r\n")
        self.assertTrue(h.client.disconnecting)


class TimeoutTests(SynchronousTestCase):
    """Every wait on the client has a timeout."""

    def test_idle_timeout(self) -> None:
        """A silent client gets 421 4.4.2 and is closed after idle_timeout."""
        h = FrontHarness()
        h.replies()
        h.reactor.advance(29)
        self.assertEqual(h.replies(), b"")
        h.reactor.advance(1)
        self.assertEqual(h.replies(), b"421 4.4.2 gw.test Error: timeout exceeded\r\n")
        self.assertTrue(h.client.disconnecting)

    def test_idle_timer_waits_for_the_router(self) -> None:
        """While the gateway waits on the router, the client is not idle."""
        h = FrontHarness()
        pending: Deferred[Decision] = Deferred()
        h.router.answer = pending
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        h.replies()
        h.reactor.advance(100)
        self.assertEqual(h.replies(), b"")
        pending.callback(Refuse("no"))
        self.assertEqual(h.replies(), b"550 5.7.1 no\r\n")
        h.reactor.advance(30)
        self.assertEqual(h.replies(), b"421 4.4.2 gw.test Error: timeout exceeded\r\n")

    def test_session_timeout(self) -> None:
        """A session longer than session_timeout is closed with 421, busy or not."""
        h = FrontHarness()
        h.replies()
        for _ in range(29):
            h.reactor.advance(20)
            h.send(b"NOOP\r\n")
        h.replies()
        h.reactor.advance(20)
        self.assertEqual(h.replies(), b"421 4.4.2 gw.test Error: session time limit exceeded\r\n")

    def test_one_timer_per_session(self) -> None:
        """Idle and session limits share one timer, which commands do not move; a closed
        session leaves none behind."""
        h = FrontHarness()
        (timer,) = h.reactor.getDelayedCalls()
        due = timer.getTime()
        for _ in range(3):
            h.reactor.advance(1)
            h.send(b"NOOP\r\n")
        self.assertEqual(h.reactor.getDelayedCalls(), [timer])
        self.assertEqual(timer.getTime(), due)
        h.send(b"QUIT\r\n")
        h.front.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.reactor.getDelayedCalls(), [])


class MailTests(SynchronousTestCase):
    """MAIL FROM is answered by the gateway, with its checks."""

    def test_mail_before_helo(self) -> None:
        """MAIL needs EHLO/HELO first."""
        h = FrontHarness()
        h.replies()
        h.send(b"MAIL FROM:<a@b>\r\n")
        self.assertEqual(h.replies(), b"503 5.5.1 Error: send HELO/EHLO first\r\n")

    def test_nested_mail(self) -> None:
        """A second MAIL in a transaction is refused."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n")
        self.assertTrue(h.replies().endswith(b"503 5.5.1 Error: nested MAIL command\r\n"))

    def test_size_over_limit(self) -> None:
        """A declared SIZE over the limit gets 552 5.3.4 at MAIL."""
        h = FrontHarness(make_config(max_message_size=1000))
        h.send(b"EHLO c\r\n")
        h.replies()
        h.send(b"MAIL FROM:<a@b> SIZE=1001\r\nMAIL FROM:<a@b> SIZE=1000\r\n")
        self.assertEqual(
            h.replies(), b"552 5.3.4 Message size exceeds fixed limit\r\n250 2.1.0 Ok\r\n"
        )

    def test_syntax(self) -> None:
        """A malformed MAIL gets 501."""
        h = FrontHarness()
        h.send(b"EHLO c\r\n")
        h.replies()
        h.send(b"MAIL TO:<a@b>\r\n")
        self.assertEqual(h.replies(), b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")

    def test_rcpt_before_mail(self) -> None:
        """RCPT needs MAIL first."""
        h = FrontHarness()
        h.send(b"EHLO c\r\n")
        h.replies()
        h.send(b"RCPT TO:<a@b>\r\n")
        self.assertEqual(h.replies(), b"503 5.5.1 Error: need MAIL command\r\n")

    def test_data_without_recipients(self) -> None:
        """DATA with no accepted recipient gets 554 and reaches no backend."""
        h = FrontHarness()
        h.router.answer = Refuse("no")
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        self.assertTrue(h.replies().endswith(b"554 5.5.1 Error: no valid recipients\r\n"))
        self.assertEqual(h.reactor.tcpClients, [])


class AccessLogTests(SynchronousTestCase):
    """One access event per transaction and per session."""

    def test_transaction_event(self) -> None:
        """A delivered message logs sender, recipients with replies, backend and outcome."""
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.send(b"body\r\n.\r\n")
        backend.reply(b"250 2.0.0 queued\r\n")
        [event] = [e for e in events if e.get("kind") == "smtp.transaction"]
        self.assertEqual(
            (
                event["sender"],
                event["recipients"],
                event["backend"],
                event["outcome"],
                event["final"],
                event["size"],
                event["helo"],
                event["client"],
            ),
            (
                "from@example.net",
                [("rcpt@example.org", "250 2.1.5 Ok")],
                "127.0.0.1:2500",
                "delivered",
                "250 2.0.0 queued",
                9,
                "client.test",
                "127.0.0.1:40000",
            ),
        )

    def test_session_event(self) -> None:
        """Closing the session logs how it ended."""
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h = FrontHarness()
        h.send(b"EHLO c\r\nQUIT\r\n")
        h.front.connectionLost(Failure(ConnectionLost()))
        [event] = [e for e in events if e.get("kind") == "smtp.session"]
        self.assertEqual((event["end"], event["helo"]), ("quit", "c"))


class GreetingDelayTests(SynchronousTestCase):
    """[smtp] greeting_delay and early talkers."""

    def test_greeting_after_delay(self) -> None:
        """The 220 waits greeting_delay seconds."""
        h = FrontHarness(make_config(greeting_delay=2.0))
        self.assertEqual(h.replies(), b"")
        h.reactor.advance(2.0)
        self.assertEqual(h.replies(), b"220 gw.test ESMTP\r\n")
        h.send(b"NOOP\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok\r\n")

    def test_early_talker_refused(self) -> None:
        """A client that talks before the greeting gets 554 5.5.0 and is closed."""
        h = FrontHarness(make_config(greeting_delay=2.0))
        h.send(b"EHLO spam\r\n")
        self.assertEqual(
            h.replies(), b"554 5.5.0 Error: improper use of SMTP command pipelining\r\n"
        )
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.front.session.end, "talked before the greeting")
        h.reactor.advance(5)
        self.assertEqual(h.replies(), b"")


class HalfCloseTests(SynchronousTestCase):
    """A client that half-closes gets every reply it is owed, then the close (issue #11,
    defect 5), as Postfix answers it."""

    def test_front_is_half_closeable(self) -> None:
        """TCP (and relaygate's PROXY and limits wrappers) tell the front of a half-close."""
        self.assertTrue(IHalfCloseableProtocol.providedBy(FrontHarness().front))

    def test_body_dot_quit_then_half_close(self) -> None:
        """Body, dot and QUIT in one write, then EOF: the backend's 250, then 221, then close."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.received()
        backend.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        h.replies()
        h.send(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        h.front.readConnectionLost()
        self.assertEqual(backend.received(), b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(h.replies(), b"")
        self.assertFalse(h.client.disconnecting)
        backend.reply(b"250 2.0.0 Ok: queued as ABC\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok: queued as ABC\r\n221 2.0.0 gw.test Bye\r\n")
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.front.session.delivered, 1)

    def test_mail_rcpt_quit_then_half_close(self) -> None:
        """MAIL, RCPT and QUIT, then EOF: every reply, the backend's RCPT reply included."""
        h = FrontHarness()
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nQUIT\r\n")
        h.front.readConnectionLost()
        backend = h.connect_backend()
        backend.received()
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        self.assertFalse(h.client.disconnecting)
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assertEqual(h.replies(), b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n221 2.0.0 gw.test Bye\r\n")
        self.assertTrue(h.client.disconnecting)

    def test_half_close_without_quit(self) -> None:
        """Commands before EOF are answered; an unfinished last line is not; then close."""
        h = FrontHarness()
        h.replies()
        h.send(b"NOOP\r\nNOO")
        h.front.readConnectionLost()
        self.assertEqual(h.replies(), b"250 2.0.0 Ok\r\n")
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.front.session.end, "client closed")

    def test_half_close_mid_body_abandons_the_message(self) -> None:
        """EOF before the final dot: the backend connection is cut, the message never ends."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.received()
        backend.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        h.replies()
        h.send(b"Subject: hi\r\n\r\nbody\r\n")
        h.front.readConnectionLost()
        self.assertEqual(backend.received(), b"Subject: hi\r\n\r\nbody\r\n")
        self.assertTrue(backend.transport.disconnecting)
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.replies(), b"")
