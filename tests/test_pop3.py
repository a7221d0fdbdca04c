"""Tests for the POP3 front L{relaygate.pop3} (no real sockets)."""

from __future__ import annotations

import base64
import hashlib
import poplib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relaygate.addresses import HostPort
from relaygate.config.errors import ConfigError
from relaygate.listeners import new_server_tls
from relaygate.pop3 import POP3Front, POP3FrontFactory
from relaygate.routing.router import Accept, Refuse, Router, RouterUnavailable
from relaygate.routing.table import TableRouter
from tests.authservice import start_auth_service
from tests.dovecot import Dovecot, dovecot_for
from tests.fronts import (
    Gateway,
    RawClient,
    ScriptedRouter,
    backend_connection,
    big_message,
    config_for,
    connect_front,
    gateway,
    listener,
    make_config,
    server_tls_config,
    start_gateway,
    take,
)

SALT = b"<42.0@gw.example.org>"


class POP3TestCase(SynchronousTestCase):
    """Build a POP3 front on a memory reactor with a scripted router."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.router = ScriptedRouter()

    def front(self, tls: str = "none", **pop3: Any) -> tuple[POP3Front, StringTransport]:
        sections: dict[str, Any] = {"pop3": pop3, "auth": {"http": "http://127.0.0.1:1/auth"}}
        if tls != "none":
            sections["tls"] = server_tls_config(self.mktemp())
        config = make_config(**sections)
        listen = listener(tls)
        server_tls = new_server_tls(listen, config)
        factory = POP3FrontFactory(
            config, listen, self.router, gateway(self.reactor), lambda: 42, server_tls=server_tls
        )
        front = factory.buildProtocol(None)
        return front, connect_front(front)


class POP3FrontTests(POP3TestCase):
    """Pre-auth commands answered by the front itself."""

    def test_greeting(self) -> None:
        """nginx's greeting, without a timestamp unless APOP or CRAM-MD5 is on."""
        _, transport = self.front()
        self.assertEqual(transport.value(), b"+OK POP3 ready\r\n")

    def test_greeting_with_apop(self) -> None:
        """With APOP, the greeting carries nginx's C{<random.time@name>} timestamp."""
        _, transport = self.front(auth=["user", "apop"])
        self.assertEqual(transport.value(), b"+OK POP3 ready " + SALT + b"\r\n")

    def test_capa(self) -> None:
        """CAPA lists the configured capabilities, USER and the SASL mechanisms."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"CAPA\r\n")
        self.assertEqual(
            take(transport),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
            b"USER\r\nSASL PLAIN LOGIN\r\n.\r\n",
        )

    def test_capa_tls_required(self) -> None:
        """When TLS is required first, CAPA offers only STLS for logging in."""
        front, transport = self.front(tls="starttls-required")
        take(transport)
        front.dataReceived(b"CAPA\r\nUSER bob\r\n")
        self.assertEqual(
            take(transport),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
            b"STLS\r\n.\r\n-ERR invalid command\r\n",
        )

    def test_pipelined(self) -> None:
        """NOOP, AUTH, STLS and QUIT sent at once are answered in order, then close."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"NOOP\r\nAUTH\r\nSTLS\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(
            take(transport),
            b"+OK\r\n+OK methods supported:\r\nPLAIN\r\nLOGIN\r\n.\r\n"
            b"-ERR invalid command\r\n+OK\r\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_user_pass(self) -> None:
        """USER then PASS asks the router; the password is the rest of the line."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"USER alice@example.org\r\nPASS p w %\r\n")
        self.assertEqual(take(transport), b"+OK\r\n")
        [request] = self.router.requests
        self.assertEqual(
            (request.protocol, request.method, request.user, request.password),
            ("pop3", "plain", b"alice@example.org", b"p w %"),
        )

    def test_pass_without_user(self) -> None:
        """PASS first is an invalid command."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"PASS x\r\n")
        self.assertEqual(take(transport), b"-ERR invalid command\r\n")

    def test_user_state_limits_commands(self) -> None:
        """After USER only PASS, CAPA, NOOP and QUIT are valid, as in nginx."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"USER bob\r\nAPOP bob x\r\nPASS pw\r\n")
        self.assertEqual(
            take(transport), b"+OK\r\n-ERR invalid command\r\n-ERR invalid command\r\n"
        )

    def test_apop(self) -> None:
        """APOP sends the digest and the greeting's timestamp to the router."""
        front, transport = self.front(auth=["apop"])
        take(transport)
        front.dataReceived(b"APOP bob 0123456789abcdef0123456789abcdef\r\n")
        request = self.router.requests[0]
        self.assertEqual(
            (request.method, request.user, request.password, request.salt),
            ("apop", b"bob", b"0123456789abcdef0123456789abcdef", SALT),
        )

    def test_auth_plain(self) -> None:
        """AUTH PLAIN with and without an initial response."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"AUTH PLAIN\r\n")
        self.assertEqual(take(transport), b"+ \r\n")
        front.dataReceived(base64.b64encode(b"\0bob\0pw") + b"\r\n")
        self.assertEqual(self.router.requests[0].user, b"bob")
        front2, _ = self.front()
        front2.dataReceived(b"AUTH PLAIN " + base64.b64encode(b"\0carol\0pw") + b"\r\n")
        self.assertEqual(self.router.requests[1].user, b"carol")

    def test_auth_refuses_line_breaks_nul_and_long_values(self) -> None:
        """A decoded SASL user or password with CR, LF or NUL, or too long, gets -ERR."""
        front, transport = self.front(auth=["plain", "login"], max_errors=10)
        take(transport)
        for decoded in [b"\0bob\0p\rw", b"\0" + b"u" * 256 + b"\0pw", b"\0bob\0" + b"p" * 1025]:
            front.dataReceived(b"AUTH PLAIN " + base64.b64encode(decoded) + b"\r\n")
            self.assertEqual(take(transport), b"-ERR invalid command\r\n")
        front.dataReceived(b"AUTH LOGIN\r\n" + base64.b64encode(b"b\nob") + b"\r\n")
        self.assertEqual(take(transport), b"+ VXNlcm5hbWU6\r\n-ERR invalid command\r\n")
        self.assertEqual(self.router.requests, [])

    def test_auth_cram_md5(self) -> None:
        """AUTH CRAM-MD5 challenges with the greeting's timestamp."""
        front, transport = self.front(auth=["cram-md5"])
        take(transport)
        front.dataReceived(b"AUTH CRAM-MD5\r\n")
        self.assertEqual(take(transport), b"+ " + base64.b64encode(SALT) + b"\r\n")
        front.dataReceived(base64.b64encode(b"bob " + b"a" * 32) + b"\r\n")
        self.assertEqual(self.router.requests[0].method, "cram-md5")

    def test_bad_base64(self) -> None:
        """An invalid SASL response is an invalid command."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"AUTH LOGIN\r\n!!!\r\n")
        self.assertEqual(take(transport), b"+ VXNlcm5hbWU6\r\n-ERR invalid command\r\n")

    def test_line_too_long(self) -> None:
        """An over-long line is refused and the connection closed."""
        front, transport = self.front(max_line_length=512)
        take(transport)
        front.dataReceived(b"USER " + b"x" * 600)
        self.assertEqual(take(transport), b"-ERR line too long\r\n")
        self.assertTrue(transport.disconnecting)

    def test_refused(self) -> None:
        """A router refusal is C{-ERR <message>} and a close."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: Refuse("Invalid login")
        front.dataReceived(b"USER bob\r\nPASS x\r\n")
        self.assertEqual(take(transport), b"+OK\r\n-ERR Invalid login\r\n")
        self.assertTrue(transport.disconnecting)

    def test_router_unavailable(self) -> None:
        """A router failure is nginx's C{-ERR internal server error} and a close."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: RouterUnavailable("down")
        front.dataReceived(b"USER bob\r\nPASS x\r\n")
        self.assertEqual(take(transport), b"+OK\r\n-ERR internal server error\r\n")
        self.assertTrue(transport.disconnecting)

    def test_half_close_waits_for_pipelined_answers(self) -> None:
        """Commands pipelined before a half-close are all answered (a login's refusal too)."""
        front, transport = self.front()
        take(transport)
        self.router.answer = lambda r: Refuse("Invalid login or password", wait=1.0)
        front.dataReceived(b"NOOP\r\nUSER bob\r\nPASS x\r\nNOOP\r\nQU")
        front.readConnectionLost()
        self.assertEqual(take(transport), b"+OK\r\n+OK\r\n")
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1.0)
        self.assertEqual(take(transport), b"-ERR Invalid login or password\r\n+OK\r\n")
        self.assertTrue(transport.disconnecting)

    def test_half_close_while_reading(self) -> None:
        """A half-close with nothing pending closes at once, after the answers."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"CAPA\r\nNOOP\r\n")
        front.readConnectionLost()
        self.assertTrue(take(transport).endswith(b".\r\n+OK\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_apop_needs_auth_service(self) -> None:
        """APOP with the embedded table is refused at start-up: there is no password."""
        with self.assertRaises(ConfigError) as e:
            make_config(pop3={"auth": ["apop"]})
        self.assertEqual(str(e.exception), "test.toml: pop3.auth: 'apop' needs [auth] http")


class POP3BackendTests(POP3TestCase):
    """Logging in to a POP3 backend."""

    def login(self, front: POP3Front, transport: StringTransport, **accept: Any) -> Any:
        take(transport)
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 110),), **accept)
        front.dataReceived(b"USER alice\r\nPASS p w\r\n")
        take(transport)
        return backend_connection(self.reactor)

    def test_xclient_and_user_pass(self) -> None:
        """XCLIENT when the greeting offers it, then USER/PASS; the backend's +OK is relayed."""
        front, transport = self.front()
        backend, backend_transport = self.login(front, transport)
        backend.dataReceived(b"+OK [XCLIENT] Dovecot ready. <1.2@x>\r\n")
        self.assertEqual(take(backend_transport), b"XCLIENT ADDR=192.0.2.7 PORT=40000\r\n")
        backend.dataReceived(b"+OK\r\n")
        self.assertEqual(take(backend_transport), b"USER alice\r\n")
        backend.dataReceived(b"+OK\r\n")
        self.assertEqual(take(backend_transport), b"PASS p w\r\n")
        backend.dataReceived(b"+OK Logged in.\r\n")
        self.assertEqual(take(transport), b"+OK Logged in.\r\n")
        front.dataReceived(b"STAT\r\n")
        self.assertEqual(take(backend_transport), b"STAT\r\n")

    def test_auth_plain_when_configured(self) -> None:
        """backend_login = plain logs in with AUTH PLAIN; no XCLIENT unless offered."""
        front, transport = self.front(backend_login="plain")
        backend, backend_transport = self.login(front, transport, user=b"a b", password=b"x")
        backend.dataReceived(b"+OK ready\r\n")
        self.assertEqual(
            take(backend_transport), b"AUTH PLAIN " + base64.b64encode(b"\0a b\0x") + b"\r\n"
        )

    def test_user_with_space_uses_auth_plain(self) -> None:
        """A user name USER can't carry goes with AUTH PLAIN."""
        front, transport = self.front()
        backend, backend_transport = self.login(front, transport, user=b"a b")
        backend.dataReceived(b"+OK ready\r\n")
        self.assertTrue(take(backend_transport).startswith(b"AUTH PLAIN "))

    def test_backend_refusal_allows_retry(self) -> None:
        """A backend -ERR is the client's -ERR and the client may try again."""
        front, transport = self.front()
        backend, _backend_transport = self.login(front, transport)
        backend.dataReceived(b"+OK ready\r\n+OK\r\n-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(take(transport), b"-ERR [AUTH] Authentication failed\r\n")
        self.assertFalse(transport.disconnecting)
        front.dataReceived(b"USER alice\r\nPASS good\r\n")
        self.assertEqual(take(transport), b"+OK\r\n")
        self.assertEqual(self.router.requests[-1].attempt, 2)

    def test_backend_garbage(self) -> None:
        """A backend that answers nonsense is an internal server error."""
        front, transport = self.front()
        backend, _ = self.login(front, transport)
        backend.dataReceived(b"hello\r\n")
        self.assertEqual(take(transport), b"-ERR internal server error\r\n")

    def test_backend_drops(self) -> None:
        """A backend that hangs up during login is an internal server error."""
        front, transport = self.front()
        backend, _ = self.login(front, transport)
        backend.connectionLost(Failure(Exception("gone")))
        self.assertEqual(take(transport), b"-ERR internal server error\r\n")


class DovecotPOP3Tests(TestCase):
    """The POP3 front against a real Dovecot, with poplib and raw sockets."""

    message = b"From: a@example.org\r\nSubject: hello\r\n\r\n.leading dot\r\nHello.\r\n"
    big = big_message(10 * 1024 * 1024)

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        return Deferred.fromCoroutine(self.start_dovecot())

    async def start_dovecot(self) -> None:
        def prepare(dovecot: Dovecot) -> None:
            dovecot.deliver("alice@example.org", self.message)
            dovecot.deliver("big@example.org", self.big)

        users = {
            "alice@example.org": "p w%x",
            "apop@example.org": "apop secret",
            "big@example.org": "big",
            "carol@example.org": "right",
        }
        self.dovecot = await dovecot_for(self, users, prepare)

    async def gateway(self, auth_url: str = "", **pop3: Any) -> Gateway:
        from twisted.internet import reactor

        config = config_for(self.dovecot.pop3_port, auth_url, pop3=pop3)
        router: Router
        if auth_url:
            from relaygate.routing.http import new_http_router

            router, pool = new_http_router(config.auth, reactor)
            pool.startService()
            self.addCleanup(pool.stopService)
        else:
            router = TableRouter(config.routes)
        server_tls = new_server_tls(config.listen[1], config)
        factory = POP3FrontFactory(
            config, config.listen[1], router, gateway(reactor), server_tls=server_tls
        )
        return await start_gateway(self, factory)

    async def test_user_pass_and_retr(self) -> None:
        """poplib logs in with USER/PASS (a password with spaces) and retrieves a message."""
        gateway = await self.gateway()

        def session() -> tuple[bytes, list[bytes]]:
            client = poplib.POP3("127.0.0.1", gateway.port, timeout=30)
            try:
                client.user("alice@example.org")
                welcome = client.pass_("p w%x")
                _, lines, _ = client.retr(1)
                return welcome, lines
            finally:
                client.quit()

        welcome, lines = await deferToThread(session)
        self.assertEqual(welcome, b"+OK Logged in.")
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", self.message)

    async def test_apop_with_auth_service(self) -> None:
        """APOP's digest is checked by the auth service, whose Auth-Pass logs in at Dovecot."""

        def respond(headers: dict[str, str]) -> dict[str, str]:
            expected = hashlib.md5((headers["auth-salt"] + "apop secret").encode()).hexdigest()
            if headers["auth-method"] != "apop" or headers["auth-pass"] != expected:
                return {"Auth-Status": "Invalid login or password"}
            return {
                "Auth-Status": "OK",
                "Auth-Server": "127.0.0.1",
                "Auth-Port": str(self.dovecot.pop3_port),
                "Auth-Pass": "apop secret",
            }

        service = await start_auth_service(self, respond)
        gateway = await self.gateway(auth_url=service.url, auth=["user", "apop"])

        def session() -> bytes:
            client = poplib.POP3("127.0.0.1", gateway.port, timeout=30)
            try:
                answer: bytes = client.apop("apop@example.org", "apop secret")
                return answer
            finally:
                client.quit()

        self.assertEqual(await deferToThread(session), b"+OK Logged in.")
        self.assertRegex(service.requests[0]["auth-salt"], r"^<\d+\.\d+@gw\.example\.org>$")

    async def test_auth_plain_and_client_address(self) -> None:
        """AUTH PLAIN logs in; Dovecot logs the client address the gateway sent with XCLIENT."""
        gateway = await self.gateway()
        start = len(self.dovecot.log)
        response = base64.b64encode(b"\0alice@example.org\0p w%x")

        def session() -> list[bytes]:
            client = RawClient(gateway.port, source="127.0.0.2")
            try:
                lines = [client.line()]
                client.send(b"AUTH PLAIN " + response + b"\r\nQUIT\r\n")
                lines += [client.line(), client.line()]
                return lines
            finally:
                client.close()

        lines = await deferToThread(session)
        self.assertEqual(
            lines, [b"+OK POP3 ready\r\n", b"+OK Logged in.\r\n", b"+OK Logging out.\r\n"]
        )
        line = await deferToThread(
            self.dovecot.wait_for_log, "Login: user=<alice@example.org>", 30, start
        )
        self.assertIn("rip=127.0.0.2,", line)

    async def test_large_retr_byte_identical(self) -> None:
        """A 10 MiB message comes through RETR unchanged (dot-stuffing and all)."""
        gateway = await self.gateway()

        def session() -> list[bytes]:
            client = poplib.POP3("127.0.0.1", gateway.port, timeout=60)
            try:
                client.user("big@example.org")
                client.pass_("big")
                _, lines, _ = client.retr(1)
                return lines
            finally:
                client.quit()

        lines = await deferToThread(session)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", self.big)

    async def test_wrong_password_then_right_one(self) -> None:
        """Dovecot's -ERR reaches the client; the next USER/PASS in the session works."""
        gateway = await self.gateway()

        def session() -> list[bytes]:
            client = RawClient(gateway.port)
            try:
                client.line()
                client.send(b"USER carol@example.org\r\nPASS wrong\r\n")
                lines = [client.line(), client.line()]
                client.send(b"USER carol@example.org\r\nPASS right\r\nQUIT\r\n")
                lines += [client.line(), client.line(), client.line()]
                return lines
            finally:
                client.close()

        self.assertEqual(
            await deferToThread(session),
            [
                b"+OK\r\n",
                b"-ERR [AUTH] Authentication failed\r\n",
                b"+OK\r\n",
                b"+OK Logged in.\r\n",
                b"+OK Logging out.\r\n",
            ],
        )
