"""Unit tests for L{relaygate.smtp.front}: exact replies, what reaches the backend, and when."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.routing.router import Accept, Decision, Refuse, RouterUnavailable
from tests.smtp_harness import OTHER_BACKEND, FrontHarness, make_config

# Endpoint factories ignore the connector they are given.
NO_CONNECTOR: Any = None


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


class InputLimitTests(SynchronousTestCase):
    """Bad input gets a clear error, never a crash or unbounded buffering."""

    def test_long_line(self) -> None:
        """A command line over 2048 octets gets 500 5.5.2; the next command works."""
        h = FrontHarness()
        h.replies()
        h.send(b"NOOP " + b"x" * 2050 + b"\r\nNOOP\r\n")
        self.assertEqual(h.replies(), b"500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n")

    def test_long_line_without_end_is_not_buffered(self) -> None:
        """Bytes of an over-long line are dropped as they come, answered once."""
        h = FrontHarness()
        h.replies()
        for _ in range(10):
            h.send(b"x" * 4096)
        self.assertEqual(h.replies(), b"500 5.5.2 Error: line too long\r\n")
        self.assertLessEqual(len(h.front._runner.queue.buffer), 4096)
        h.send(b"\r\nNOOP\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok\r\n")

    def test_cr_inside_a_command(self) -> None:
        """A bare CR inside a command line is refused, not passed on."""
        h = FrontHarness()
        h.replies()
        h.send(b"HELO a\rMAIL FROM:<x@y>\r\n")
        self.assertEqual(h.replies(), b"500 5.5.2 Error: CR, LF or NUL inside a command line\r\n")

    def test_nul_inside_a_command(self) -> None:
        """A NUL inside a command line is refused."""
        h = FrontHarness()
        h.replies()
        h.send(b"HELO a\0b\r\n")
        self.assertEqual(h.replies(), b"500 5.5.2 Error: CR, LF or NUL inside a command line\r\n")

    def test_unknown_command(self) -> None:
        """An unknown verb gets 500 5.5.2."""
        h = FrontHarness()
        h.replies()
        h.send(b"BOGUS\r\n\xff\xfe\r\n")
        self.assertEqual(
            h.replies(),
            b"500 5.5.2 Error: command not recognized\r\n"
            b"500 5.5.2 Error: command not recognized\r\n",
        )

    def test_too_many_errors(self) -> None:
        """The fifth error (max_errors) ends the session with 421."""
        h = FrontHarness()
        h.replies()
        h.send(b"BOGUS\r\n" * 6)
        self.assertEqual(
            h.replies(),
            b"500 5.5.2 Error: command not recognized\r\n" * 4
            + b"421 4.7.0 Error: too many errors\r\n",
        )
        self.assertTrue(h.client.disconnecting)

    def test_lf_only_line_ends_accepted(self) -> None:
        """Commands ending in a bare LF are understood (as most MTAs do)."""
        h = FrontHarness()
        h.replies()
        h.send(b"NOOP\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok\r\n")


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


class RoutingTests(SynchronousTestCase):
    """RCPT asks the router; its answer decides the reply or the backend."""

    def test_router_request(self) -> None:
        """The router gets nginx's SMTP facts: MAIL/RCPT lines as typed, HELO, client address."""
        h = FrontHarness(client_ip="127.0.0.2")
        h.router.answer = Refuse("no")
        h.send(b"EHLO client.test\r\nmail FROM:<a@b.example> SIZE=10\r\nRcpt To:<c@d.example>\r\n")
        [request] = h.router.requests
        self.assertEqual(
            (
                request.protocol,
                request.method,
                request.client_ip,
                request.client_port,
                request.helo,
                request.mail_from,
                request.rcpt_to,
                request.recipient,
                request.client_host,
            ),
            (
                "smtp",
                "none",
                "127.0.0.2",
                40000,
                b"client.test",
                b"mail FROM:<a@b.example> SIZE=10",
                b"Rcpt To:<c@d.example>",
                b"c@d.example",
                "[UNAVAILABLE]",
            ),
        )

    def test_router_unavailable(self) -> None:
        """A router failure is a temporary 451 4.3.2, not a refusal."""
        h = FrontHarness()
        failing: Deferred[Decision] = Deferred()
        h.router.answer = failing
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        h.replies()
        failing.errback(RouterUnavailable("down"))
        self.assertEqual(h.replies(), b"451 4.3.2 Internal server error\r\n")

    def test_refusal(self) -> None:
        """A refusal is 550 5.7.1 with the router's text."""
        h = FrontHarness()
        h.router.answer = Refuse("Relay access denied")
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
        h.replies()
        h.send(b"RCPT TO:<c@d>\r\n")
        self.assertEqual(h.replies(), b"550 5.7.1 Relay access denied\r\n")

    def test_refusal_with_error_code(self) -> None:
        """The router's SMTP code (nginx Auth-Error-Code) replaces 550 5.7.1."""
        h = FrontHarness()
        h.router.answer = Refuse("Try later", smtp_code="450 4.7.1")
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
        h.replies()
        h.send(b"RCPT TO:<c@d>\r\n")
        self.assertEqual(h.replies(), b"450 4.7.1 Try later\r\n")

    def test_refusal_with_wait(self) -> None:
        """A refusal with a wait (nginx Auth-Wait) is answered only after the wait."""
        h = FrontHarness()
        h.router.answer = Refuse("slow down", wait=3.0)
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
        h.replies()
        h.send(b"RCPT TO:<c@d>\r\nNOOP\r\n")
        h.reactor.advance(2.9)
        self.assertEqual(h.replies(), b"")
        h.reactor.advance(0.1)
        self.assertEqual(h.replies(), b"550 5.7.1 slow down\r\n250 2.0.0 Ok\r\n")

    def test_backend_connection_target(self) -> None:
        """An accepted recipient connects to the router's backend."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        [(host, port, _, timeout, _)] = h.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 2500, 10.0))

    def test_backend_down(self) -> None:
        """No backend reachable: 451 4.4.1 at RCPT."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        h.replies()
        _, _, factory, _, _ = h.reactor.tcpClients[0]
        factory.clientConnectionFailed(NO_CONNECTOR, Failure(ConnectionRefusedError()))
        self.assertEqual(
            h.replies(), b"451 4.4.1 Cannot reach the mail server, try again later\r\n"
        )

    def test_failover_to_next_backend(self) -> None:
        """When the first backend refuses the connection, the next one is tried."""
        h = FrontHarness()
        h.router.answer = Accept((OTHER_BACKEND, OTHER_BACKEND.__class__("127.0.0.1", 2502)))
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        _, _, factory, _, _ = h.reactor.tcpClients[0]
        factory.clientConnectionFailed(NO_CONNECTOR, Failure(ConnectionRefusedError()))
        self.assertEqual(h.reactor.tcpClients[1][:2], ("127.0.0.1", 2502))

    def test_backend_greeting_refusal_fails_over(self) -> None:
        """A backend greeting with 554 is skipped like a dead one."""
        h = FrontHarness()
        h.router.answer = Accept((OTHER_BACKEND, OTHER_BACKEND.__class__("127.0.0.1", 2502)))
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        h.connect_backend(b"554 go away\r\n")
        self.assertEqual(h.reactor.tcpClients[1][:2], ("127.0.0.1", 2502))


class RelayTests(SynchronousTestCase):
    """MAIL, RCPT and DATA at the backend; the backend's replies reach the client."""

    def test_mail_and_rcpt_pipelined_to_backend(self) -> None:
        """With PIPELINING, MAIL and RCPT go in one write; RCPT's reply is the backend's."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b> BODY=8BITMIME\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\n")
        backend = h.connect_backend()
        self.assertEqual(backend.received(), b"EHLO gw.test\r\n")
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        self.assertEqual(
            backend.received(), b"MAIL FROM:<a@b> BODY=8BITMIME\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\n"
        )
        h.replies()
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assertEqual(h.replies(), b"250 2.1.5 Ok\r\n")

    def test_without_pipelining_commands_wait(self) -> None:
        """Without PIPELINING, RCPT is sent only after MAIL's reply."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        backend = h.connect_backend()
        backend.received()
        backend.reply(b"250 backend\r\n")
        self.assertEqual(backend.received(), b"MAIL FROM:<a@b>\r\n")
        backend.reply(b"250 2.1.0 Ok\r\n")
        self.assertEqual(backend.received(), b"RCPT TO:<c@d>\r\n")

    def test_helo_fallback(self) -> None:
        """A backend that refuses EHLO gets HELO."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        backend = h.connect_backend()
        backend.received()
        backend.reply(b"502 what\r\n")
        self.assertEqual(backend.received(), b"HELO gw.test\r\n")

    def test_backend_rcpt_refusal_reaches_client(self) -> None:
        """The backend's own RCPT refusal (multi-line) is the client's reply."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        backend = h.connect_backend()
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        h.replies()
        backend.reply(b"250 2.1.0 Ok\r\n550-5.1.1 No such user\r\n550 5.1.1 here\r\n")
        self.assertEqual(h.replies(), b"550-5.1.1 No such user\r\n550 5.1.1 here\r\n")

    def test_backend_mail_refusal_reaches_client(self) -> None:
        """A backend refusing MAIL answers every RCPT of the transaction."""
        h = FrontHarness()
        h.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        backend = h.connect_backend()
        backend.reply(b"250 backend\r\n")
        backend.reply(b"553 5.7.1 Sender rejected\r\n")
        h.replies()
        h.send(b"RCPT TO:<e@d>\r\n")
        self.assertEqual(h.replies(), b"553 5.7.1 Sender rejected\r\n")

    def test_client_pipelining_gets_replies_in_order(self) -> None:
        """RCPT, RCPT, DATA in one write: each reply in order, DATA only after the RCPTs."""
        h = FrontHarness()
        h.send(b"EHLO c\r\n")
        h.replies()
        h.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@d>\r\nDATA\r\n")
        backend = h.connect_backend()
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        self.assertEqual(h.replies(), b"250 2.1.0 Ok\r\n")
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 first\r\n")
        self.assertEqual(h.replies(), b"250 2.1.5 first\r\n")
        backend.received()
        backend.reply(b"250 2.1.5 second\r\n")
        self.assertEqual(h.replies(), b"250 2.1.5 second\r\n")
        self.assertEqual(backend.received(), b"DATA\r\n")
        backend.reply(b"354 go ahead\r\n")
        self.assertEqual(h.replies(), b"354 go ahead\r\n")

    def test_recipient_for_other_backend_gets_452(self) -> None:
        """A recipient routed to another backend than the first gets 452 4.5.3."""
        h = FrontHarness()
        h.router.by_recipient[b"x@other.example"] = Accept((OTHER_BACKEND,))
        backend = h.open_transaction()
        h.send(b"RCPT TO:<x@other.example>\r\n")
        self.assertEqual(
            h.replies(), b"452 4.5.3 Too many recipients: send this one in a new transaction\r\n"
        )
        self.assertEqual(backend.received(), b"")
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_max_recipients(self) -> None:
        """Recipients beyond max_recipients get 452 4.5.3 without a lookup."""
        h = FrontHarness(make_config(max_recipients=1))
        h.open_transaction()
        h.send(b"RCPT TO:<x@example.org>\r\n")
        self.assertEqual(h.replies(), b"452 4.5.3 Error: too many recipients\r\n")
        self.assertEqual(len(h.router.requests), 1)

    def test_message_relayed_and_final_reply_is_the_backends(self) -> None:
        """The body goes to the backend as sent; the dot's reply is the backend's."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        self.assertEqual(backend.received(), b"DATA\r\n")
        backend.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self.assertEqual(h.replies(), b"354 End data with <CR><LF>.<CR><LF>\r\n")
        h.send(b"Subject: hi\r\n\r\n..dot\r\n")
        h.send(b"end\r\n.\r\n")
        self.assertEqual(backend.received(), b"Subject: hi\r\n\r\n..dot\r\nend\r\n.\r\n")
        self.assertEqual(h.replies(), b"")
        backend.reply(b"250 2.0.0 Ok: queued as ABC\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok: queued as ABC\r\n")

    def test_backend_final_refusal(self) -> None:
        """A backend 554 after the dot is the client's reply; never a 2xx."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"spam\r\n.\r\n")
        backend.reply(b"554 5.7.1 Spam\r\n")
        self.assertEqual(h.replies(), b"554 5.7.1 Spam\r\n")

    def test_backend_lost_after_dot(self) -> None:
        """The backend closing before its final reply gives 451 4.4.2."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"body\r\n.\r\n")
        backend.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(
            h.replies(), b"451 4.4.2 Lost the connection to the mail server, try again later\r\n"
        )

    def test_backend_lost_mid_data(self) -> None:
        """The backend closing mid-message: the client's dot gets 451 4.4.2."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"part one\r\n")
        backend.protocol.connectionLost(Failure(ConnectionLost()))
        h.send(b"part two\r\n.\r\n")
        self.assertEqual(
            h.replies(), b"451 4.4.2 Lost the connection to the mail server, try again later\r\n"
        )

    def test_backend_reply_timeout(self) -> None:
        """No reply to the dot within backend_timeout: 451, connection dropped."""
        h = FrontHarness(make_config(backend_timeout=60.0))
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"body\r\n.\r\n")
        h.reactor.advance(60)
        self.assertEqual(
            h.replies(), b"451 4.4.2 Lost the connection to the mail server, try again later\r\n"
        )
        self.assertTrue(backend.transport.disconnecting)

    def test_bare_lf_refused_and_backend_aborted(self) -> None:
        """A smuggling attempt: 550 5.6.11, the backend is cut off before any end-of-data."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        backend.received()
        h.replies()
        h.send(b"hello\r\n")
        h.send(b"x\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nevil\r\n.\r\n")
        self.assertEqual(backend.received(), b"hello\r\n")
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(
            h.replies(), b"550 5.6.11 Message refused: bare CR or LF in the message body\r\n"
        )

    def test_body_too_big(self) -> None:
        """A body over max_message_size: 552 5.3.4, backend cut off, nothing delivered."""
        h = FrontHarness(make_config(max_message_size=100))
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        backend.received()
        h.replies()
        h.send(b"x" * 98 + b"\r\n")
        h.send(b"y" * 10 + b"\r\n.\r\n")
        self.assertNotIn(b".\r\n", backend.received()[-3:])
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(h.replies(), b"552 5.3.4 Message size exceeds fixed limit\r\n")

    def test_backpressure_pauses_client(self) -> None:
        """While the backend's buffer is full the client's transport is paused."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        producer = backend.transport.producer
        assert producer is not None
        producer.pauseProducing()
        self.assertEqual(h.client.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(h.client.producerState, "producing")
        h.send(b".\r\n")
        self.assertIsNone(backend.transport.producer)

    def test_pipelined_commands_after_dot(self) -> None:
        """Commands sent right after the dot wait for the final reply, then run."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"body\r\n.\r\nNOOP\r\n")
        self.assertEqual(h.replies(), b"")
        backend.reply(b"250 2.0.0 queued\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 queued\r\n250 2.0.0 Ok\r\n")

    def test_second_transaction_reuses_backend(self) -> None:
        """A second transaction to the same route uses the same backend connection."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.send(b"one\r\n.\r\n")
        backend.reply(b"250 2.0.0 one\r\n")
        backend.received()
        h.replies()
        h.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        self.assertEqual(backend.received(), b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_rset_relayed(self) -> None:
        """RSET in a transaction is relayed, and the backend's reply returned."""
        h = FrontHarness()
        backend = h.open_transaction()
        backend.received()
        h.send(b"RSET\r\n")
        self.assertEqual(backend.received(), b"RSET\r\n")
        backend.reply(b"250 2.0.0 Reset\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Reset\r\n")

    def test_quit_relayed(self) -> None:
        """QUIT is passed on to the backend."""
        h = FrontHarness()
        backend = h.open_transaction()
        backend.received()
        h.send(b"QUIT\r\n")
        self.assertEqual(backend.received(), b"QUIT\r\n")
        self.assertEqual(h.replies(), b"221 2.0.0 gw.test Bye\r\n")

    def test_client_gone_mid_data_delivers_nothing(self) -> None:
        """A client lost before its dot: the backend is cut off, no end-of-data sent."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        backend.received()
        h.send(b"partial\r\n")
        h.front.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(backend.received(), b"partial\r\n")
        self.assertTrue(backend.transport.disconnecting)


class XClientTests(SynchronousTestCase):
    """The backend learns the client's address through XCLIENT when it offers it."""

    def test_xclient_then_ehlo_again(self) -> None:
        """XCLIENT carries ADDR, PORT, NAME, PROTO and HELO; EHLO follows its 220."""
        config = make_config(xclient=True)
        h = FrontHarness(config, client_ip="127.0.0.2")
        h.send(b"EHLO client.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        backend = h.connect_backend()
        backend.received()
        backend.reply(b"250-backend\r\n250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN\r\n")
        self.assertEqual(
            backend.received(),
            b"XCLIENT ADDR=127.0.0.2 PORT=40000 NAME=[UNAVAILABLE] PROTO=ESMTP "
            b"HELO=client.test\r\n",
        )
        backend.reply(b"220 backend ESMTP\r\n")
        self.assertEqual(backend.received(), b"EHLO gw.test\r\n")
        backend.reply(b"250 backend\r\n")
        self.assertEqual(backend.received(), b"MAIL FROM:<a@b>\r\n")

    def test_xclient_refused_is_temporary(self) -> None:
        """A backend refusing XCLIENT gives the client 451, never a silent downgrade."""
        h = FrontHarness(make_config(xclient=True))
        h.send(b"EHLO client.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        backend = h.connect_backend()
        backend.reply(b"250-backend\r\n250 XCLIENT ADDR\r\n")
        h.replies()
        backend.reply(b"550 5.7.0 not authorized\r\n")
        self.assertEqual(
            h.replies(), b"451 4.4.1 Cannot reach the mail server, try again later\r\n"
        )

    def test_xclient_off(self) -> None:
        """With xclient = false no XCLIENT is sent even when offered."""
        h = FrontHarness(make_config(xclient=False))
        h.send(b"EHLO client.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        backend = h.connect_backend()
        backend.received()
        backend.reply(b"250-backend\r\n250 XCLIENT ADDR\r\n")
        self.assertEqual(backend.received(), b"MAIL FROM:<a@b>\r\n")


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
