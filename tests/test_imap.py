"""Tests for the IMAP front L{relaygate.imap}: in memory, and against Dovecot and imaplib."""

from __future__ import annotations

import base64
import errno
import hashlib
import imaplib
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaygate.addresses import HostPort
from relaygate.imap import IMAPFront, IMAPFrontFactory
from relaygate.listeners import new_server_tls
from relaygate.routing.router import Accept, Refuse, Router, RouterUnavailable
from relaygate.routing.table import TableRouter
from tests.authservice import ok_to, start_auth_service
from tests.dovecot import Dovecot, dovecot_for
from tests.fronts import (
    Gateway,
    RawClient,
    ScriptedRouter,
    backend_connection,
    big_message,
    config_for,
    connect_front,
    dead_port,
    gateway,
    listener,
    make_config,
    server_tls_config,
    start_gateway,
    take,
)

GREETING = (
    b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN] "
    b"gw.example.org ready\r\n"
)
BACKEND_CAPS = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN"
POST_CAPS = b"IMAP4rev1 SASL-IR ID ENABLE IDLE SORT UIDPLUS MOVE LITERAL+"


class IMAPFrontTestCase(SynchronousTestCase):
    """Build an IMAP front on a memory reactor with a scripted router."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.router = ScriptedRouter()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def front(self, tls: str = "none", **imap: Any) -> tuple[IMAPFront, StringTransport]:
        sections: dict[str, Any] = {"imap": imap, "auth": {"http": "http://127.0.0.1:1/auth"}}
        if tls != "none":
            sections["tls"] = server_tls_config(self.mktemp())
        config = make_config(**sections)
        listen = listener(tls)
        server_tls = new_server_tls(listen, config)
        factory = IMAPFrontFactory(
            config, listen, self.router, gateway(self.reactor), lambda: 42, server_tls=server_tls
        )
        front = factory.buildProtocol(None)
        transport = connect_front(front)
        return front, transport

    def access_events(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace") == "relaygate.access"]


class FrontTests(IMAPFrontTestCase):
    """Pre-auth commands answered by the front itself."""

    def test_greeting(self) -> None:
        """The greeting lists the pre-auth capabilities and the server name."""
        _, transport = self.front()
        self.assertEqual(transport.value(), GREETING)

    def test_pipelined_commands_answered_in_order(self) -> None:
        """CAPABILITY, NOOP, ID and LOGOUT sent at once get their answers in order."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(
            b'a CAPABILITY\r\nb NOOP\r\nc ID ("name" "x")\r\nd LOGOUT\r\ne NOOP\r\n'
        )
        self.assertEqual(
            take(transport),
            b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN\r\n"
            b"a OK completed\r\n"
            b"b OK completed\r\n"
            b"* ID NIL\r\nc OK completed\r\n"
            b"* BYE Logging out\r\nd OK completed\r\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_starttls_without_tls(self) -> None:
        """STARTTLS on a listener without TLS is an invalid command, as in nginx."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a STARTTLS\r\n")
        self.assertEqual(take(transport), b"a BAD invalid command\r\n")

    def test_starttls_required_disables_login(self) -> None:
        """With STARTTLS required, capabilities say LOGINDISABLED and LOGIN gets NO."""
        front, transport = self.front(tls="starttls-required")
        self.assertIn(b"STARTTLS LOGINDISABLED]", take(transport))
        front.dataReceived(b"a LOGIN alice pw\r\n")
        self.assertEqual(take(transport), b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n")
        self.assertEqual(self.router.requests, [])

    def test_too_many_errors_close(self) -> None:
        """After max_errors bad commands the session is closed."""
        front, transport = self.front(max_errors=2)
        take(transport)
        front.dataReceived(b"a FOO\r\n")
        self.assertFalse(transport.disconnecting)
        front.dataReceived(b"b SELECT INBOX\r\nc NOOP\r\n")
        self.assertEqual(take(transport), b"a BAD invalid command\r\nb BAD invalid command\r\n")
        self.assertTrue(transport.disconnecting)

    def test_line_too_long(self) -> None:
        """An over-long line is answered with BAD and the connection closes."""
        front, transport = self.front(max_line_length=512)
        take(transport)
        front.dataReceived(b"a LOGIN " + b"x" * 1000)
        self.assertEqual(take(transport), b"a BAD line too long\r\n")
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout(self) -> None:
        """A silent client is told and disconnected after [imap] timeout."""
        front, transport = self.front(timeout=10.0)
        take(transport)
        self.reactor.advance(9)
        front.dataReceived(b"a NOOP\r\n")
        self.reactor.advance(9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertEqual(
            take(transport), b"a OK completed\r\n* BYE Disconnected for inactivity\r\n"
        )
        self.assertTrue(transport.disconnecting)

    def test_login_literals(self) -> None:
        """LOGIN with synchronizing literals gets C{+ OK} for each; the router sees the bytes."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a LOGIN {5}\r\n")
        self.assertEqual(take(transport), b"+ OK\r\n")
        front.dataReceived(b"alice {6}\r\n")
        self.assertEqual(take(transport), b"+ OK\r\n")
        front.dataReceived('pä %"\r\n'.encode())
        [request] = self.router.requests
        self.assertEqual(
            (request.protocol, request.method, request.user, request.password, request.attempt),
            ("imap", "plain", b"alice", 'pä %"'.encode(), 1),
        )
        self.assertEqual((request.client_ip, request.client_port), ("192.0.2.7", 40000))

    def test_authenticate_plain_with_initial_response(self) -> None:
        """AUTHENTICATE PLAIN with SASL-IR goes straight to the router."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a AUTHENTICATE PLAIN " + base64.b64encode(b"\0bob\0pw") + b"\r\n")
        self.assertEqual(take(transport), b"")
        self.assertEqual(self.router.requests[0].user, b"bob")
        self.assertEqual(self.router.requests[0].password, b"pw")

    def test_authenticate_plain_continuation(self) -> None:
        """Without an initial response the front asks with C{+ } (nginx's bytes)."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(take(transport), b"+ \r\n")
        front.dataReceived(base64.b64encode(b"zid\0bob\0pw") + b"\r\n")
        self.assertEqual(self.router.requests[0].user, b"bob")

    def test_authenticate_refuses_line_breaks_and_nul(self) -> None:
        """A decoded SASL user or password with CR, LF or NUL gets BAD; the router sees nothing."""
        front, transport = self.front(auth=["plain", "login"])
        take(transport)
        plain = base64.b64encode(b"\0bob\0pa\r\nss")
        front.dataReceived(b"a AUTHENTICATE PLAIN " + plain + b"\r\n")
        self.assertEqual(take(transport), b"a BAD invalid command\r\n")
        front.dataReceived(b"b AUTHENTICATE LOGIN " + base64.b64encode(b"bo\nb") + b"\r\n")
        self.assertEqual(take(transport), b"b BAD invalid command\r\n")
        front.dataReceived(b"c AUTHENTICATE LOGIN\r\n" + base64.b64encode(b"bob") + b"\r\n")
        self.assertEqual(take(transport), b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n")
        front.dataReceived(base64.b64encode(b"p\0w") + b"\r\n")
        self.assertEqual(take(transport), b"c BAD invalid command\r\n")
        self.assertEqual(self.router.requests, [])

    def test_authenticate_refuses_long_values(self) -> None:
        """A SASL user over 255 octets or a password over 1024 gets BAD; at the limits it goes."""
        front, transport = self.front(max_errors=10)
        take(transport)
        for tag, user, password in [(b"a", b"u" * 256, b"pw"), (b"b", b"bob", b"p" * 1025)]:
            plain = base64.b64encode(b"\0" + user + b"\0" + password)
            front.dataReceived(tag + b" AUTHENTICATE PLAIN " + plain + b"\r\n")
            self.assertEqual(take(transport), tag + b" BAD invalid command\r\n")
        self.assertEqual(self.router.requests, [])
        plain = base64.b64encode(b"\0" + b"u" * 255 + b"\0" + b"p" * 1024)
        front.dataReceived(b"c AUTHENTICATE PLAIN " + plain + b"\r\n")
        self.assertEqual(len(self.router.requests), 1)

    def test_authenticate_cram_md5_digest_must_be_hex(self) -> None:
        """A CRAM-MD5 digest that is not 32 hex digits gets BAD; a valid one goes lower-cased."""
        front, transport = self.front(auth=["cram-md5"])
        take(transport)
        front.dataReceived(b"a AUTHENTICATE CRAM-MD5\r\n")
        take(transport)
        front.dataReceived(base64.b64encode(b"bob " + b"x" * 32) + b"\r\n")
        self.assertEqual(take(transport), b"a BAD invalid command\r\n")
        front.dataReceived(b"b AUTHENTICATE CRAM-MD5\r\n")
        take(transport)
        front.dataReceived(base64.b64encode(b"bob " + b"AB" * 16) + b"\r\n")
        self.assertEqual(self.router.requests[0].password, b"ab" * 16)

    def test_authenticate_cancelled(self) -> None:
        """A C{*} response cancels the exchange with a tagged BAD."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n")
        self.assertEqual(
            take(transport), b"+ \r\na BAD authentication cancelled\r\nb OK completed\r\n"
        )

    def test_authenticate_login(self) -> None:
        """AUTHENTICATE LOGIN asks for user then password with nginx's prompts.

        The router gets method C{login}, as from SMTP; auth_http sends it as C{plain}.
        """
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a AUTHENTICATE LOGIN\r\n")
        self.assertEqual(take(transport), b"+ VXNlcm5hbWU6\r\n")
        front.dataReceived(base64.b64encode(b"bob") + b"\r\n")
        self.assertEqual(take(transport), b"+ UGFzc3dvcmQ6\r\n")
        front.dataReceived(base64.b64encode(b"pw") + b"\r\n")
        request = self.router.requests[0]
        self.assertEqual(
            (request.method, request.user, request.password), ("login", b"bob", b"pw")
        )

    def test_authenticate_cram_md5(self) -> None:
        """CRAM-MD5 sends nginx's salt; the router gets the digest and the salt."""
        front, transport = self.front(auth=["plain", "cram-md5"])
        take(transport)
        front.dataReceived(b"a AUTHENTICATE CRAM-MD5\r\n")
        salt = b"<42.0@gw.example.org>"
        self.assertEqual(take(transport), b"+ " + base64.b64encode(salt) + b"\r\n")
        front.dataReceived(base64.b64encode(b"bob " + b"0" * 32) + b"\r\n")
        request = self.router.requests[0]
        self.assertEqual(
            (request.method, request.user, request.password, request.salt),
            ("cram-md5", b"bob", b"0" * 32, salt),
        )

    def test_mechanism_not_enabled(self) -> None:
        """A mechanism missing from [imap] auth is an invalid command."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a AUTHENTICATE CRAM-MD5\r\n")
        self.assertEqual(take(transport), b"a BAD invalid command\r\n")

    def test_refused_closes(self) -> None:
        """A router refusal without Auth-Wait is C{<tag> NO <message>} and a close."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: Refuse("Invalid login or password")
        front.dataReceived(b"a LOGIN alice wrong\r\n")
        self.assertEqual(take(transport), b"a NO Invalid login or password\r\n")
        self.assertTrue(transport.disconnecting)
        front.connectionLost(Failure(Exception()))
        [event] = self.access_events()
        self.assertEqual((event["outcome"], event["user"]), ("auth failed", "alice"))

    def test_refused_with_wait(self) -> None:
        """With Auth-Wait the refusal is delayed and the client may try again."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: Refuse("Try again\r\nlater", wait=3.0)
        front.dataReceived(b"a LOGIN alice wrong\r\nb NOOP\r\n")
        self.reactor.advance(2.9)
        self.assertEqual(take(transport), b"")
        self.reactor.advance(0.1)
        self.assertEqual(take(transport), b"a NO Try again  later\r\nb OK completed\r\n")
        self.assertFalse(transport.disconnecting)
        front.dataReceived(b"c LOGIN alice other\r\n")
        self.assertEqual([r.attempt for r in self.router.requests], [1, 2])

    def test_router_unavailable(self) -> None:
        """A router failure is nginx's C{* BAD internal server error} and a close."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: RouterUnavailable("down")
        front.dataReceived(b"a LOGIN alice pw\r\n")
        self.assertEqual(take(transport), b"* BAD internal server error\r\n")
        self.assertTrue(transport.disconnecting)

    def test_router_timeout(self) -> None:
        """A router that never answers times out after [auth] timeout."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a LOGIN alice pw\r\n")
        self.reactor.advance(5.0)
        self.assertEqual(take(transport), b"* BAD internal server error\r\n")

    def test_client_leaves_during_lookup(self) -> None:
        """A client that disconnects while the router thinks cancels the lookup."""
        front, _transport = self.front()
        front.dataReceived(b"a LOGIN alice pw\r\n")
        front.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.router.pending[0].called, True)
        self.assertEqual(self.access_events()[0]["outcome"], "client closed before login")

    def test_input_paused_while_busy(self) -> None:
        """While the login is pending, piled-up input pauses reading from the client."""
        front, transport = self.front(max_line_length=512)
        front.dataReceived(b"a LOGIN alice pw\r\n")
        self.assertEqual(transport.producerState, "producing")
        front.dataReceived(b"b NOOP\r\n" * 200)
        self.assertEqual(transport.producerState, "paused")


class BackendLoginTests(IMAPFrontTestCase):
    """Logging in to the backend and switching to the relay."""

    def login(
        self, front: IMAPFront, transport: StringTransport, command: bytes = b"a LOGIN alice pw"
    ) -> tuple[Any, StringTransport]:
        take(transport)
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 1143),))
        front.dataReceived(command + b"\r\n")
        backend, backend_transport = backend_connection(self.reactor)
        return backend, backend_transport

    def test_login_with_id_and_capabilities(self) -> None:
        """ID carries the client's address; the client's OK carries the backend's capabilities."""
        front, transport = self.front()
        backend, backend_transport = self.login(front, transport, b'a LOGIN alice "p w"')
        backend.dataReceived(b"* OK [CAPABILITY " + BACKEND_CAPS + b"] Dovecot ready.\r\n")
        self.assertEqual(
            take(backend_transport),
            b'R1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40000" '
            b'"x-connected-ip" "127.0.0.1" "x-connected-port" "1143")\r\n',
        )
        backend.dataReceived(b'* ID ("name" "Dovecot")\r\nR1 OK ID completed.\r\n')
        self.assertEqual(take(backend_transport), b'R2 LOGIN "alice" "p w"\r\n')
        backend.dataReceived(b"* CAPABILITY " + POST_CAPS + b"\r\nR2 OK Logged in\r\n")
        self.assertEqual(take(transport), b"a OK [CAPABILITY " + POST_CAPS + b"] Logged in\r\n")
        # Now everything is relayed as is.
        front.dataReceived(b"b SELECT INBOX\r\n")
        self.assertEqual(take(backend_transport), b"b SELECT INBOX\r\n")
        backend.dataReceived(b"* 3 EXISTS\r\n")
        self.assertEqual(take(transport), b"* 3 EXISTS\r\n")

    def test_half_close_waits_for_pipelined_answers(self) -> None:
        """Commands pipelined before a half-close are all answered (a login's refusal too)."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: Refuse("Invalid login or password", wait=1.0)
        front.dataReceived(b"a NOOP\r\nb LOGIN alice wrong\r\nc CAPABILITY\r\nd NOOP\r\ne LOG")
        front.readConnectionLost()
        self.assertEqual(take(transport), b"a OK completed\r\n")
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1.0)
        self.assertEqual(
            take(transport),
            b"b NO Invalid login or password\r\n"
            b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN\r\n"
            b"c OK completed\r\nd OK completed\r\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_half_close_after_login_reaches_the_backend(self) -> None:
        """A half-close during the login is relayed once the login succeeded, after the
        commands pipelined behind it."""
        front, transport = self.front(send_id=False)
        backend, backend_transport = self.login(front, transport)
        half_closed: list[bool] = []
        backend_transport.loseWriteConnection = lambda: half_closed.append(True)  # type: ignore[attr-defined]
        front.dataReceived(b"b SELECT INBOX\r\n")
        front.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        backend.dataReceived(b"* OK [CAPABILITY " + BACKEND_CAPS + b"] ready\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" "pw"\r\n')
        backend.dataReceived(b"* CAPABILITY " + POST_CAPS + b"\r\nR1 OK Logged in\r\n")
        self.assertEqual(take(transport), b"a OK [CAPABILITY " + POST_CAPS + b"] Logged in\r\n")
        self.assertEqual(take(backend_transport), b"b SELECT INBOX\r\n")
        self.assertEqual(half_closed, [True])
        self.assertFalse(transport.disconnecting or backend_transport.disconnecting)

    def test_login_literal_plus(self) -> None:
        """Credentials that quoting can't carry go as LITERAL+ literals when offered."""
        front, transport = self.front(send_id=False)
        backend, backend_transport = self.login(
            front, transport, b"a LOGIN alice {3+}\r\np\xc3\xa4"
        )
        backend.dataReceived(b"* OK [CAPABILITY " + BACKEND_CAPS + b"] ready\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" {3+}\r\np\xc3\xa4\r\n')

    def test_login_sync_literal(self) -> None:
        """Without LITERAL+, the front waits for the backend's continuation."""
        front, transport = self.front(send_id=False)
        backend, backend_transport = self.login(
            front, transport, b"a LOGIN alice {3+}\r\np\xc3\xa4"
        )
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" {3}\r\n')
        backend.dataReceived(b"+ OK\r\n")
        self.assertEqual(take(backend_transport), b"p\xc3\xa4\r\n")
        backend.dataReceived(b"R1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
        self.assertEqual(take(transport), b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")

    def test_logindisabled_uses_authenticate_plain(self) -> None:
        """A backend that says LOGINDISABLED gets AUTHENTICATE PLAIN (with SASL-IR here)."""
        front, transport = self.front(send_id=False)
        backend, backend_transport = self.login(front, transport)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGINDISABLED AUTH=PLAIN] x\r\n")
        self.assertEqual(
            take(backend_transport),
            b"R1 AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n",
        )

    def test_authenticate_plain_without_sasl_ir(self) -> None:
        """Without SASL-IR the response follows the backend's C{+}."""
        front, transport = self.front(send_id=False, backend_login="plain")
        backend, backend_transport = self.login(front, transport)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] x\r\n")
        self.assertEqual(take(backend_transport), b"R1 AUTHENTICATE PLAIN\r\n")
        backend.dataReceived(b"+ \r\n")
        self.assertEqual(take(backend_transport), base64.b64encode(b"\0alice\0pw") + b"\r\n")

    def test_greeting_without_capabilities(self) -> None:
        """A greeting without capabilities makes the front ask for them."""
        front, transport = self.front(send_id=False)
        backend, backend_transport = self.login(front, transport)
        backend.dataReceived(b"* OK ready\r\n")
        self.assertEqual(take(backend_transport), b"R1 CAPABILITY\r\n")
        backend.dataReceived(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nR1 OK done\r\n")
        self.assertEqual(take(backend_transport), b'R2 LOGIN "alice" "pw"\r\n')
        backend.dataReceived(b"R2 OK Logged in\r\n")
        self.assertEqual(take(backend_transport), b"R3 CAPABILITY\r\n")
        backend.dataReceived(b"* CAPABILITY IMAP4rev1 IDLE\r\nR3 OK done\r\n")
        self.assertEqual(take(transport), b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")

    def test_rewritten_credentials(self) -> None:
        """The router's user and password are what the backend sees."""
        front, transport = self.front(send_id=False)
        take(transport)
        self.router.answer = lambda r: Accept(
            (HostPort("127.0.0.1", 1143),), user=b"alice@real", password=b"other"
        )
        front.dataReceived(b"a LOGIN alice pw\r\n")
        backend, backend_transport = backend_connection(self.reactor)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice@real" "other"\r\n')

    def test_backend_refusal_allows_retry(self) -> None:
        """A backend NO becomes the client's NO; the session stays open for another try."""
        front, transport = self.front(send_id=False)
        backend, backend_transport = self.login(front, transport)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        backend.dataReceived(b"R1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self.assertEqual(take(transport), b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertTrue(backend_transport.disconnecting)
        self.assertFalse(transport.disconnecting)
        front.dataReceived(b"b LOGIN alice pw2\r\n")
        self.assertEqual(self.router.requests[-1].attempt, 2)

    def test_backend_refusal_text_passed(self) -> None:
        """With pass_error_message the backend's own text reaches the client."""
        front, transport = self.front(send_id=False, pass_error_message=True)
        backend, _ = self.login(front, transport)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\nR1 NO [UNAVAILABLE] busy\r\n")
        self.assertEqual(take(transport), b"a NO [UNAVAILABLE] busy\r\n")

    def test_too_many_failures_close(self) -> None:
        """After max_login_failures refused logins the session closes."""
        front, transport = self.front(send_id=False, max_login_failures=1)
        backend, _ = self.login(front, transport)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\nR1 NO no\r\n")
        self.assertTrue(transport.disconnecting)

    def test_failover(self) -> None:
        """A backend that refuses the connection is skipped for the next one."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 1), HostPort("127.0.0.1", 2)))
        front.dataReceived(b"a LOGIN alice pw\r\n")
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual([c[1] for c in self.reactor.tcpClients], [1, 2])

    def test_all_backends_down(self) -> None:
        """No reachable backend is nginx's internal server error."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 1),))
        front.dataReceived(b"a LOGIN alice pw\r\n")
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(take(transport), b"* BAD internal server error\r\n")
        self.assertTrue(transport.disconnecting)

    def test_backend_silent(self) -> None:
        """A backend that never greets times out after [imap] timeout."""
        front, transport = self.front(timeout=7.0)
        self.login(front, transport)
        self.reactor.advance(7.0)
        self.assertEqual(take(transport), b"* BAD internal server error\r\n")

    def test_pipelined_after_login(self) -> None:
        """Commands sent right after LOGIN wait and reach the backend after the login."""
        front, transport = self.front(send_id=False)
        backend, backend_transport = self.login(front, transport, b"a LOGIN alice pw\r\nb LIST")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" "pw"\r\n')
        backend.dataReceived(b"R1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
        self.assertEqual(take(backend_transport), b"b LIST\r\n")

    def test_access_log_after_relay(self) -> None:
        """One access event when the relayed session ends, with bytes each way."""
        front, transport = self.front(send_id=False)
        backend, _backend_transport = self.login(front, transport)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        backend.dataReceived(b"R1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
        front.dataReceived(b"b LOGOUT\r\n")
        backend.dataReceived(b"* BYE\r\nb OK bye\r\n")
        backend.connectionLost(Failure(Exception("closed")))
        self.assertTrue(transport.disconnecting)
        front.connectionLost(Failure(Exception("closed")))
        [event] = self.access_events()
        self.assertEqual(
            {k: event[k] for k in ("protocol", "user", "backend", "outcome", "attempts")},
            {
                "protocol": "imap",
                "user": "alice",
                "backend": "127.0.0.1:1143",
                "outcome": "backend closed",
                "attempts": 1,
            },
        )
        self.assertEqual((event["bytes_from_client"], event["bytes_from_backend"]), (10, 17))


PASSWORD = 'p w%"x'
UTF8_PASSWORD = 'ä p%"ß'


class DeadPortTests(SynchronousTestCase):
    """The "backend down" tests' address stays refused and unclaimed for the whole test."""

    def test_refused_and_held(self) -> None:
        """Connections are refused, and no one else can bind the port while the test runs."""
        port = dead_port(self)
        with socket.socket() as other:
            with self.assertRaises(OSError) as bound:
                other.bind(("127.0.0.1", port))
            self.assertEqual(bound.exception.errno, errno.EADDRINUSE)
        with socket.socket() as client:
            self.assertEqual(client.connect_ex(("127.0.0.1", port)), errno.ECONNREFUSED)


class DovecotIMAPTests(TestCase):
    """The IMAP front against a real Dovecot, with imaplib and raw sockets."""

    message = b"From: a@example.org\r\nSubject: hello\r\n\r\nHello, world.\r\n"
    big = big_message(50 * 1024 * 1024)

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        return Deferred.fromCoroutine(self.start_dovecot())

    async def start_dovecot(self) -> None:
        def prepare(dovecot: Dovecot) -> None:
            dovecot.deliver("alice@example.org", self.message)
            dovecot.deliver("big@example.org", self.big)

        users = {
            "alice@example.org": PASSWORD,
            "utf8@example.org": UTF8_PASSWORD,
            "big@example.org": "big",
            "bob@example.org": "right",
        }
        self.dovecot = await dovecot_for(self, users, prepare)

    async def gateway(self, auth_url: str = "", backend_port: int = 0, **imap: Any) -> Gateway:
        from twisted.internet import reactor

        config = config_for(backend_port or self.dovecot.imap_port, auth_url, imap=imap)
        router: Router
        if auth_url:
            from relaygate.routing.http import new_http_router

            router, pool = new_http_router(config.auth, reactor)
            pool.startService()
            self.addCleanup(pool.stopService)
        else:
            router = TableRouter(config.routes)
        server_tls = new_server_tls(config.listen[0], config)
        factory = IMAPFrontFactory(
            config, config.listen[0], router, gateway(reactor), server_tls=server_tls
        )
        return await start_gateway(self, factory)

    async def test_imaplib_login_and_fetch(self) -> None:
        """imaplib logs in with a quoted password holding space, %, and a quote, and fetches."""
        gateway = await self.gateway()

        def session() -> tuple[Any, ...]:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                login = client.login("alice@example.org", PASSWORD)
                client.select("INBOX")
                _, data = client.fetch("1", "(BODY.PEEK[])")
                client.logout()
                return login, data[0]

        login, fetched = await deferToThread(session)
        self.assertEqual(login[0], "OK")
        self.assertTrue(login[1][0].startswith(b"[CAPABILITY IMAP4rev1 "))
        self.assertTrue(login[1][0].endswith(b"] Logged in"))
        self.assertEqual(fetched[1], self.message)
        await gateway.all_ended()
        [event] = gateway.events
        self.assertEqual(
            (event["user"], event["backend"]),
            ("alice@example.org", f"127.0.0.1:{self.dovecot.imap_port}"),
        )
        # After LOGOUT both close at once; which FIN arrives first is up to the scheduler.
        self.assertIn(event["outcome"], ("backend closed", "client closed"))

    async def test_literal_utf8_password_and_capabilities(self) -> None:
        """A UTF-8 password in a synchronizing literal; the OK carries Dovecot's capabilities."""
        gateway = await self.gateway()
        password = UTF8_PASSWORD.encode()

        def session() -> list[bytes]:
            client = RawClient(gateway.port)
            try:
                lines = [client.line()]
                client.send(b"a LOGIN utf8@example.org {%d}\r\n" % len(password))
                lines.append(client.line())
                client.send(password + b"\r\n")
                lines += client.until(b"a ")
                client.send(b"b LOGOUT\r\n")
                lines += client.until(b"b ")
                return lines
            finally:
                client.close()

        lines = await deferToThread(session)
        self.assertEqual(lines[0], GREETING)
        self.assertEqual(lines[1], b"+ OK\r\n")
        self.assertTrue(lines[2].startswith(b"a OK [CAPABILITY IMAP4rev1 "), lines[2])
        self.assertIn(b" MOVE ", lines[2])
        self.assertTrue(lines[2].endswith(b"] Logged in\r\n"))
        self.assertTrue(lines[-1].startswith(b"b OK Logout completed"))

    async def test_authenticate_plain_with_and_without_sasl_ir(self) -> None:
        """AUTHENTICATE PLAIN works with an initial response and after a continuation."""
        gateway = await self.gateway()
        response = base64.b64encode(b"\0alice@example.org\0" + PASSWORD.encode())

        def session(initial: bool) -> bytes:
            client = RawClient(gateway.port)
            try:
                client.line()
                if initial:
                    client.send(b"a AUTHENTICATE PLAIN " + response + b"\r\n")
                else:
                    client.send(b"a AUTHENTICATE PLAIN\r\n")
                    self.assertEqual(client.line(), b"+ \r\n")
                    client.send(response + b"\r\n")
                answer = client.until(b"a ")[-1]
                client.send(b"b LOGOUT\r\n")
                client.until(b"b ")
                return answer
            finally:
                client.close()

        for initial in (True, False):
            answer = await deferToThread(session, initial)
            self.assertTrue(answer.startswith(b"a OK [CAPABILITY "), answer)

    async def test_id_before_login_and_client_address(self) -> None:
        """ID before login is answered; Dovecot logs the client's address from the gateway's ID."""
        gateway = await self.gateway()
        start = len(self.dovecot.log)

        def session() -> list[bytes]:
            client = RawClient(gateway.port, source="127.0.0.2")
            try:
                client.line()
                client.send(b'a ID ("name" "test")\r\n')
                lines = client.until(b"a ")
                client.send(b'b LOGIN alice@example.org "p w%\\"x"\r\nc LOGOUT\r\n')
                lines += client.until(b"c ")
                return lines
            finally:
                client.close()

        lines = await deferToThread(session)
        self.assertEqual(lines[:2], [b"* ID NIL\r\n", b"a OK completed\r\n"])
        self.assertTrue(lines[2].startswith(b"b OK [CAPABILITY"))
        line = await deferToThread(
            self.dovecot.wait_for_log, "Login: user=<alice@example.org>", 30, start
        )
        self.assertIn("rip=127.0.0.2,", line)

    async def test_credentials_rewritten_by_auth_service(self) -> None:
        """The auth service sees nginx's headers and its Auth-User/Auth-Pass reach Dovecot."""
        service = await start_auth_service(
            self,
            ok_to(
                "127.0.0.1",
                self.dovecot.imap_port,
                Auth_User="alice@example.org",
                Auth_Pass=PASSWORD,
            ),
        )
        gateway = await self.gateway(auth_url=service.url)

        def session() -> tuple[Any, ...]:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                login = client.login("alias", 'a %b"')
                client.logout()
                return login

        login = await deferToThread(session)
        self.assertEqual(login[0], "OK")
        [headers] = service.requests
        self.assertEqual(
            {k: headers[k] for k in ("auth-method", "auth-user", "auth-pass", "auth-protocol")},
            {
                "auth-method": "plain",
                "auth-user": "alias",
                "auth-pass": 'a%20%25b"',
                "auth-protocol": "imap",
            },
        )
        self.assertEqual((headers["auth-login-attempt"], headers["client-ip"]), ("1", "127.0.0.1"))

    async def internal_error(self, gateway: Gateway) -> list[bytes]:
        def session() -> list[bytes]:
            client = RawClient(gateway.port)
            try:
                client.line()
                client.send(b"a LOGIN alice@example.org pw\r\n")
                return [client.line(), client.line()]
            finally:
                client.close()

        return await deferToThread(session)

    async def test_auth_service_down(self) -> None:
        """An auth service that can't be reached: nginx's internal error, then close."""
        gateway = await self.gateway(auth_url=f"http://127.0.0.1:{dead_port(self)}/auth")
        self.assertEqual(
            await self.internal_error(gateway), [b"* BAD internal server error\r\n", b""]
        )

    async def test_auth_service_garbage(self) -> None:
        """An auth service answering garbage: nginx's internal error, then close."""
        service = await start_auth_service(self, lambda headers: b"garbage\r\n\r\n")
        gateway = await self.gateway(auth_url=service.url)
        self.assertEqual(
            await self.internal_error(gateway), [b"* BAD internal server error\r\n", b""]
        )

    async def test_backend_down(self) -> None:
        """A backend that refuses connections: nginx's internal error, then close."""
        gateway = await self.gateway(backend_port=dead_port(self))
        self.assertEqual(
            await self.internal_error(gateway), [b"* BAD internal server error\r\n", b""]
        )

    async def test_large_fetch_byte_identical(self) -> None:
        """A 50 MiB message comes through the relay byte for byte."""
        gateway = await self.gateway()

        def session() -> bytes:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=60) as client:
                client.login("big@example.org", "big")
                client.select("INBOX", readonly=True)
                _, data = client.fetch("1", "(BODY.PEEK[])")
                client.logout()
                item = data[0]
                assert isinstance(item, tuple)
                body = item[1]
                return body

        body = await deferToThread(session)
        self.assertEqual(len(body), len(self.big))
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(self.big).hexdigest())
        await gateway.all_ended()
        self.assertGreater(gateway.events[0]["bytes_from_backend"], len(self.big))

    async def test_wrong_password_then_right_one(self) -> None:
        """Dovecot's refusal reaches the client as NO; the next LOGIN in the session works."""
        gateway = await self.gateway()

        def session() -> list[bytes]:
            client = RawClient(gateway.port)
            try:
                client.line()
                client.send(b"a LOGIN bob@example.org wrong\r\n")
                lines = client.until(b"a ")
                client.send(b"b LOGIN bob@example.org right\r\nc LOGOUT\r\n")
                lines += client.until(b"b ")
                lines += client.until(b"c ")
                return lines
            finally:
                client.close()

        lines = await deferToThread(session)
        self.assertEqual(lines[0], b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertTrue(lines[1].startswith(b"b OK [CAPABILITY "))
