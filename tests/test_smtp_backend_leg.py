"""Unit tests for L{relaygate.smtp.backend_leg}: routing recipients, the backend connection
(failover, EHLO/HELO, pipelining), XCLIENT and the outbound PROXY header, with exact bytes."""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.proxy_protocol import parse_header
from relaygate.routing.router import Accept, Decision, Refuse, RouterUnavailable
from tests.smtp_harness import BACKEND, OTHER_BACKEND, FrontHarness, make_config

# Endpoint factories ignore the connector they are given.
NO_CONNECTOR: Any = None


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


class BackendCommandTests(SynchronousTestCase):
    """MAIL, RCPT, RSET and QUIT at the backend: what it gets and what the client hears."""

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


class OutboundProxyTests(SynchronousTestCase):
    """backend_proxy_protocol: the backend reads a PROXY header first."""

    def test_v2_header_first(self) -> None:
        """With v2, the first bytes on the backend connection are the client's PROXY header."""
        h = FrontHarness(make_config(backend_proxy_protocol="v2"), client_ip="192.0.2.9")
        h.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
        backend = h.connect_backend(greeting=b"")
        parsed = parse_header(backend.received())
        assert parsed is not None
        header, rest = parsed
        assert header.source is not None and header.destination is not None
        self.assertEqual((header.source.host, header.source.port), ("192.0.2.9", 40000))
        self.assertEqual((header.destination.host, header.destination.port), ("127.0.0.1", 2525))
        self.assertEqual(rest, b"")
        backend.reply(b"220 backend\r\n")
        self.assertEqual(backend.received(), b"EHLO gw.test\r\n")

    def test_route_overrides(self) -> None:
        """A [[route]]'s backend_proxy_protocol wins over [smtp]'s."""
        h = FrontHarness(make_config(backend_proxy_protocol="v2"))
        h.router.answer = Accept((BACKEND,), backend_proxy_protocol="v1")
        h.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
        backend = h.connect_backend(greeting=b"")
        self.assertEqual(backend.received(), b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 2525\r\n")


class UnhandledFailureTests(SynchronousTestCase):
    """No backend reply's Deferred is left with an unhandled failure (issue #11, defect 4)."""

    def test_client_leaves_while_mail_and_rcpt_wait(self) -> None:
        """The client goes while its pipelined MAIL and RCPT wait; then the backend drops.

        Trial fails a test that leaves an "Unhandled error in Deferred" behind; collecting
        garbage here makes any such Deferred report now rather than in a later test.
        """
        h = FrontHarness()
        h.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
        backend = h.connect_backend()
        backend.received()
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        self.assertEqual(
            backend.received(), b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
        )
        h.front.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(backend.received(), b"QUIT\r\n")
        backend.protocol.connectionLost(Failure(ConnectionLost()))
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])
