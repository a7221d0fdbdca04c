"""Submission, PROXY protocol and connection limits end to end: real sockets on 127.0.0.0/8,
swaks and smtplib as clients, a real auth_http service, a scripted backend, a real HAProxy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import smtplib
import socket
import ssl
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from typing_extensions import override

from tests.authservice import AuthService, start_auth_service
from tests.certs import make_pki
from tests.peers import (
    RawClient,
    ScriptedBackend,
    dead_port,
    peer_missing,
    reactor,
    run_swaks,
    smtplib_client,
    start_backend,
    start_relay,
)

HAPROXY = shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin")
XCLIENT = b"XCLIENT ADDR PORT NAME PROTO HELO LOGIN"
USER, PASSWORD = "alice@example.org", "s3cret"


def accounts(backend: ScriptedBackend, **extra: str) -> Any:
    """An auth service answer: OK for alice's password (PLAIN/LOGIN) or digest (CRAM-MD5)."""

    def respond(headers: dict[str, str]) -> dict[str, str]:
        password = headers.get("auth-pass", "")
        if headers.get("auth-method") == "cram-md5":
            salt = headers.get("auth-salt", "").encode()
            good = hmac.new(PASSWORD.encode(), salt, hashlib.md5).hexdigest() == password
        else:
            good = password == PASSWORD
        if headers.get("auth-user") != USER or not good:
            return {"Auth-Status": "Invalid login or password"}
        answer = {"Auth-Status": "OK", "Auth-Server": "127.0.0.1", "Auth-Port": str(backend.port)}
        answer.update({name.replace("_", "-"): value for name, value in extra.items()})
        return answer

    return respond


def relay_toml(
    auth_url: str,
    smtp: str = "",
    listen: str = "",
    extra: str = "",
    auth: str = '["plain", "login", "cram-md5"]',
) -> str:
    return f"""
[server]
name = "gw.test"

[[listen]]
protocol = "smtp"
address = "127.0.0.1:2525"
{listen}

[auth]
http = "{auth_url}"

[smtp]
auth = {auth}
{smtp}

{extra}
"""


async def submission_setup(
    case: TestCase, smtp: str = "", listen: str = "", extra: str = "", **answer: str
) -> tuple[int, AuthService, ScriptedBackend]:
    """A backend offering XCLIENT, an auth service that knows alice, relaygate in front."""
    backend = await start_backend(case, extensions=(b"PIPELINING", b"8BITMIME", XCLIENT))
    service = await start_auth_service(case, accounts(backend, **answer))
    relay = await start_relay(case, relay_toml(service.url, smtp, listen, extra))
    return relay.port, service, backend


def swaks_args(port: int, *more: str) -> list[str]:
    return [
        "--server",
        "127.0.0.1",
        "--port",
        str(port),
        "--from",
        USER,
        "--to",
        "bob@example.net",
        "--helo",
        "client.test",
        "--timeout",
        "30",
        *more,
    ]


class SwaksAuthTests(TestCase):
    """swaks logs in with each mechanism and delivers; a wrong password gets 535."""

    async def check_mechanism(self, mechanism: str, method: str) -> None:
        port, service, backend = await submission_setup(self)
        result = await run_swaks(
            *swaks_args(
                port, "--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD
            )
        )
        self.assertEqual(result.code, 0, result.out)
        self.assertIn("235 2.7.0 Authentication successful", result.replies())
        [request] = service.requests
        self.assertEqual(request["auth-method"], method)
        self.assertEqual(request["auth-user"], USER)
        self.assertEqual(request["auth-protocol"], "smtp")
        self.assertEqual(request["auth-login-attempt"], "1")
        self.assertEqual(request["client-ip"], "127.0.0.1")
        xclient = [c for c in backend.commands if c.startswith(b"XCLIENT")]
        self.assertEqual(len(xclient), 1)
        self.assertIn(b" LOGIN=alice@example.org", xclient[0])
        self.assertEqual(len(backend.messages), 1)
        if method == "cram-md5":
            salt = request["auth-salt"].encode()
            digest = hmac.new(PASSWORD.encode(), salt, hashlib.md5).hexdigest()
            self.assertEqual(request["auth-pass"], digest)
            self.assertRegex(request["auth-salt"], r"^<\d+\.\d+@gw\.test>$")
        else:
            self.assertEqual(request["auth-pass"], PASSWORD)
            self.assertNotIn("auth-salt", request)

    async def test_plain(self) -> None:
        """AUTH PLAIN: Auth-Method plain, the password as typed, XCLIENT LOGIN= at the backend."""
        await self.check_mechanism("PLAIN", "plain")

    async def test_login(self) -> None:
        """AUTH LOGIN is sent to the auth service as Auth-Method plain, as nginx does."""
        await self.check_mechanism("LOGIN", "plain")

    async def test_cram_md5(self) -> None:
        """CRAM-MD5: Auth-Salt is the challenge, Auth-Pass the client's digest."""
        await self.check_mechanism("CRAM-MD5", "cram-md5")

    async def test_wrong_password(self) -> None:
        """A refused login gets 535 5.7.8 with the service's text; nothing reaches the backend."""
        port, _service, backend = await submission_setup(self)
        result = await run_swaks(
            *swaks_args(port, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", "nope")
        )
        self.assertNotEqual(result.code, 0)
        self.assertIn("535 5.7.8 Invalid login or password", result.replies())
        self.assertEqual(backend.sessions, [])

    async def test_mail_without_auth(self) -> None:
        """A client that skips AUTH gets 530 5.7.0 at MAIL."""
        port, _service, backend = await submission_setup(self)
        result = await run_swaks(*swaks_args(port))
        self.assertIn("530 5.7.0 Authentication required", result.replies())
        self.assertEqual(backend.sessions, [])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class SmtplibAuthTests(TestCase):
    """smtplib's AUTH, and the exchanges' edge cases with exact replies."""

    async def session(self, port: int, work: Any) -> Any:
        def run() -> Any:
            client = smtplib_client(port)
            try:
                client.ehlo("client.test")
                return work(client)
            finally:
                client.close()

        return await deferToThread(run)

    async def test_each_mechanism(self) -> None:
        """smtplib's login() with PLAIN, LOGIN and CRAM-MD5 all get 235 and deliver."""
        port, service, backend = await submission_setup(self)
        for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):

            def work(client: smtplib.SMTP, mechanism: str = mechanism) -> Any:
                client.user, client.password = USER, PASSWORD
                authobject = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
                code, _ = client.auth(mechanism, authobject, initial_response_ok=False)
                client.sendmail(USER, ["bob@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
                return code

            self.assertEqual(await self.session(port, work), 235, mechanism)
        self.assertEqual(
            [r["auth-method"] for r in service.requests], ["plain", "plain", "cram-md5"]
        )
        self.assertEqual(len(backend.messages), 3)

    async def test_exchange_edge_cases(self) -> None:
        """Cancel, malformed base64 and an over-long response get their exact replies."""
        port, service, _backend = await submission_setup(self)

        def work(client: smtplib.SMTP) -> list[tuple[int, bytes]]:
            replies = [client.docmd("AUTH", "LOGIN"), client.docmd("*")]
            replies.append(client.docmd("AUTH", "PLAIN !!notbase64!!"))
            replies.append(client.docmd("AUTH", "PLAIN"))
            replies.append(client.docmd("A" * 3000))
            replies.append(client.docmd("NOOP"))
            return replies

        self.assertEqual(
            await self.session(port, work),
            [
                (334, b"VXNlcm5hbWU6"),
                (501, b"5.7.0 Authentication aborted"),
                (501, b"5.5.2 Cannot decode response"),
                (334, b""),
                (500, b"5.5.6 Authentication exchange line is too long"),
                (250, b"2.0.0 Ok"),
            ],
        )
        self.assertEqual(service.requests, [])

    async def test_auth_service_down(self) -> None:
        """An auth service that can't be reached gives 454 4.7.0."""
        url = f"http://127.0.0.1:{dead_port(self)}/auth"
        relay = await start_relay(self, relay_toml(url))

        def work(client: smtplib.SMTP) -> tuple[int, bytes]:
            return client.docmd("AUTH", "PLAIN " + _b64(b"\0" + USER.encode() + b"\0x"))

        self.assertEqual(
            await self.session(relay.port, work), (454, b"4.7.0 Temporary authentication failure")
        )


class BackendAuthTests(TestCase):
    """[smtp] backend_auth = "plain": the backend gets an AUTH PLAIN of its own."""

    async def test_backend_gets_auth_service_credentials(self) -> None:
        """The backend logs in with the auth service's Auth-User and Auth-Pass."""

        def respond(line: bytes) -> bytes | None:
            return b"235 2.7.0 Authentication successful" if line.startswith(b"AUTH ") else None

        backend = await start_backend(
            self, extensions=(b"PIPELINING", b"AUTH PLAIN"), respond=respond
        )
        service = await start_auth_service(
            self, accounts(backend, Auth_User="alice", Auth_Pass="backend-secret")
        )
        relay = await start_relay(self, relay_toml(service.url, 'backend_auth = "plain"'))
        result = await run_swaks(
            *swaks_args(
                relay.port, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD
            )
        )
        self.assertEqual(result.code, 0, result.out)
        auth = [c for c in backend.commands if c.startswith(b"AUTH")]
        self.assertEqual(auth, [b"AUTH PLAIN " + base64.b64encode(b"\0alice\0backend-secret")])
        self.assertEqual(len(backend.messages), 1)

    async def test_backend_refusing_login_is_4xx(self) -> None:
        """A backend that refuses the login gives the client 451 4.7.0 for the transaction."""
        backend = await start_backend(self, extensions=(b"PIPELINING", b"AUTH PLAIN"))
        service = await start_auth_service(self, accounts(backend))
        relay = await start_relay(self, relay_toml(service.url, 'backend_auth = "plain"'))
        result = await run_swaks(
            *swaks_args(
                relay.port, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD
            )
        )
        self.assertIn(
            "451 4.7.0 The mail server refused the login, try again later", result.replies()
        )
        self.assertEqual(backend.messages, [])


# -- PROXY protocol ------------------------------------------------------------------------------


class _HAProxy(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    @override
    def outReceived(self, data: bytes) -> None:
        self.output += data

    @override
    def errReceived(self, data: bytes) -> None:
        self.output += data

    @override
    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def start_haproxy(case: TestCase, relay_port: int, send_proxy: str) -> int:
    """Run HAProxy on a 127.0.0.1 port in front of C{relay_port}; return its port.

    The test binds and listens on the port itself and hands HAProxy the socket (C{bind fd@3}),
    so connections queue from the start: nothing waits for HAProxy to come up.
    """
    if HAPROXY is None:
        peer_missing("haproxy", "haproxy")
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port: int = sock.getsockname()[1]
    config = os.path.join(directory, "haproxy.cfg")
    with open(config, "w") as f:
        f.write(
            f"""global
    maxconn 100
defaults
    mode tcp
    timeout connect 10s
    timeout client 60s
    timeout server 60s
frontend smtp
    bind fd@3
    default_backend relay
backend relay
    server relay 127.0.0.1:{relay_port} {send_proxy}
"""
        )
    process = _HAProxy()
    transport = reactor.spawnProcess(
        process,
        HAPROXY,
        [HAPROXY, "-db", "-f", config],
        env={},
        childFDs={0: "w", 1: "r", 2: "r", 3: sock.fileno()},
    )
    sock.close()

    async def stop() -> None:
        if not process.ended.called:
            transport.signalProcess("TERM")
        await process.ended

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return port


PROXY_LISTEN = "proxy_protocol = true"
TRUST_LOCAL = '[realip]\ntrusted = ["127.0.0.1/32"]'


class HAProxyTests(TestCase):
    """A real HAProxy sends PROXY v1 and v2; everyone downstream sees the real client."""

    async def check(self, send_proxy: str) -> None:
        port, service, backend = await submission_setup(
            self, listen=PROXY_LISTEN, extra=TRUST_LOCAL
        )
        front_port = start_haproxy(self, port, send_proxy)

        def work() -> int:
            client = smtplib_client(front_port, source="127.0.0.2")
            try:
                client.login(USER, PASSWORD)
                client.sendmail(USER, ["bob@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
                return client.quit()[0]
            finally:
                client.close()

        self.assertEqual(await deferToThread(work), 221)
        [request] = service.requests
        self.assertEqual(request["client-ip"], "127.0.0.2")
        self.assertEqual(request["proxy-protocol-addr"], "127.0.0.2")
        self.assertEqual(request["proxy-protocol-server-addr"], "127.0.0.1")
        self.assertEqual(request["proxy-protocol-server-port"], str(front_port))
        [xclient] = [c for c in backend.commands if c.startswith(b"XCLIENT")]
        self.assertTrue(xclient.startswith(b"XCLIENT ADDR=127.0.0.2 PORT="), xclient)
        self.assertIn(b"LOGIN=alice@example.org", xclient)

    async def test_v1(self) -> None:
        """send-proxy (v1): the auth service and the backend see 127.0.0.2."""
        await self.check("send-proxy")

    async def test_v2(self) -> None:
        """send-proxy-v2: the same through the binary header."""
        await self.check("send-proxy-v2")


async def raw_connection(case: TestCase, port: int, source: str = "127.0.0.1") -> RawClient:
    """A L{RawClient} that does not wait for a greeting (there may be none)."""
    client = RawClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    await endpoint.connect(Factory.forProtocol(lambda: client))

    def close() -> Deferred[None]:
        if client.transport is not None and not client.closed.called:
            client.transport.loseConnection()
        return client.closed

    case.addCleanup(close)
    return client


class ProxyTrustTests(TestCase):
    """PROXY headers only from [realip] trusted, and never missing."""

    async def test_untrusted_sender_refused(self) -> None:
        """A header from an address outside [realip] trusted: closed, no greeting."""
        port, service, _backend = await submission_setup(
            self, listen=PROXY_LISTEN, extra='[realip]\ntrusted = ["127.0.0.3/32"]'
        )
        client = await raw_connection(self, port)
        client.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 25\r\nEHLO x\r\n")
        await client.closed
        self.assertEqual(client.data, b"")
        self.assertEqual(service.requests, [])

    async def test_header_missing(self) -> None:
        """A trusted peer that speaks SMTP without a header is closed without a greeting."""
        port, _service, _backend = await submission_setup(
            self, listen=PROXY_LISTEN, extra=TRUST_LOCAL
        )
        client = await raw_connection(self, port)
        client.send(b"EHLO client.test\r\n")
        await client.closed
        self.assertEqual(client.data, b"")

    async def test_trusted_header_accepted(self) -> None:
        """A hand-written v1 header from a trusted peer sets the client's address."""
        port, service, _backend = await submission_setup(
            self, listen=PROXY_LISTEN, extra=TRUST_LOCAL
        )
        client = await raw_connection(self, port)
        client.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 25\r\n")
        [greeting] = await client.wait_replies(1)
        self.assertEqual(greeting, b"220 gw.test ESMTP")
        plain = _b64(b"\0" + USER.encode() + b"\0" + PASSWORD.encode()).encode()
        await client.exchange(b"EHLO client.test\r\n")
        [reply] = await client.exchange(b"AUTH PLAIN " + plain + b"\r\n")
        self.assertEqual(reply, b"235 2.7.0 Authentication successful")
        self.assertEqual(service.requests[0]["client-ip"], "192.0.2.1")
        self.assertEqual(service.requests[0]["proxy-protocol-port"], "1000")


class _ProxyReadingBackend(ScriptedBackend):
    """A scripted backend behind Twisted's own PROXY parser: it records who the header named."""

    def __init__(self) -> None:
        super().__init__([b"PIPELINING", XCLIENT], None, None)
        self.built: list[Any] = []

    @override
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


class OutboundProxyTests(TestCase):
    """backend_proxy_protocol: a backend reading PROXY sees the real client."""

    async def check(self, version: str) -> None:
        backend = _ProxyReadingBackend()
        listening = await proxyEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        ).listen(backend)
        self.addCleanup(listening.stopListening)
        backend.port = listening.getHost().port  # type: ignore[attr-defined]
        service = await start_auth_service(self, accounts(backend))
        relay = await start_relay(
            self, relay_toml(service.url, f'backend_proxy_protocol = "{version}"')
        )

        def work() -> tuple[int, int]:
            client = smtplib_client(relay.port, source="127.0.0.2")
            try:
                client.login(USER, PASSWORD)
                client.sendmail(USER, ["bob@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
                assert client.sock is not None
                return client.sock.getsockname()[1], client.quit()[0]
            finally:
                client.close()

        client_port, code = await deferToThread(work)
        self.assertEqual(code, 221)
        await backend.all_closed()
        [protocol] = backend.built
        peer = protocol.transport.getPeer()
        self.assertEqual((peer.host, peer.port), ("127.0.0.2", client_port))
        host = protocol.transport.getHost()
        self.assertEqual((host.host, host.port), ("127.0.0.1", relay.port))
        self.assertEqual(len(backend.messages), 1)

    async def test_v1(self) -> None:
        """v1: Twisted's parser at the backend reads the client's address and port."""
        await self.check("v1")

    async def test_v2(self) -> None:
        """v2: the same with the binary header."""
        await self.check("v2")


# -- connection policy --------------------------------------------------------------------------


class PolicyTests(TestCase):
    """Early talkers and [limits] through real sockets."""

    async def test_early_talker(self) -> None:
        """A client that talks before the delayed greeting gets 554 5.5.0 and is closed."""
        port, _service, _backend = await submission_setup(self, "greeting_delay = 30.0")
        client = await raw_connection(self, port)
        client.send(b"EHLO spam.test\r\n")
        await client.closed
        self.assertEqual(
            client.data, b"554 5.5.0 Error: improper use of SMTP command pipelining\r\n"
        )

    async def test_concurrent_limit(self) -> None:
        """The second connection from one address gets 421 4.7.0; after the first ends, ok."""
        port, _service, _backend = await submission_setup(
            self, extra="[limits]\nconnections_per_address = 1"
        )
        first = await raw_connection(self, port)
        await first.wait_replies(1)
        second = await raw_connection(self, port)
        await second.closed
        self.assertEqual(
            second.data,
            b"421 4.7.0 gw.test Error: too many connections from your address\r\n",
        )
        other = await raw_connection(self, port, source="127.0.0.2")
        self.assertEqual(await other.wait_replies(1), [b"220 gw.test ESMTP"])
        await first.exchange(b"QUIT\r\n")
        await first.closed
        third = await raw_connection(self, port)
        self.assertEqual(await third.wait_replies(1), [b"220 gw.test ESMTP"])

    async def test_failed_logins_block_the_address(self) -> None:
        """Reaching auth_failures_per_hour closes the session and refuses the next connection."""
        port, _service, _backend = await submission_setup(
            self, extra="[limits]\nauth_failures_per_hour = 1"
        )
        client = await raw_connection(self, port)
        await client.wait_replies(1)
        await client.exchange(b"EHLO client.test\r\n")
        wrong = _b64(b"\0" + USER.encode() + b"\0wrong").encode()
        [reply] = await client.exchange(b"AUTH PLAIN " + wrong + b"\r\n")
        self.assertEqual(reply, b"535 5.7.8 Invalid login or password")
        await client.closed
        again = await raw_connection(self, port)
        await again.closed
        self.assertEqual(
            again.data,
            b"421 4.7.0 gw.test Error: too many failed logins from your address, "
            b"try again later\r\n",
        )


# -- TLS: EXTERNAL, starttls-required, and the wrappers under TLS -------------------------------


class TLSSubmissionTests(TestCase):
    """AUTH over TLS, with the limits wrapper between the TLS layer and the front."""

    def setUp(self) -> None:
        self.pki = make_pki(os.path.abspath(self.mktemp()))

    def tls_toml(self, verify: str = "optional") -> str:
        return (
            f'[tls]\ncertificate = "{self.pki.server.certificate}"\n'
            f'key = "{self.pki.server.key}"\nclient_ca = "{self.pki.ca.certificate}"\n'
            f'verify_client = "{verify}"\n\n[limits]\nconnections_per_address = 5\n'
        )

    def context(self, certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.pki.ca.certificate)
        if certificate:
            context.load_cert_chain(self.pki.client.certificate, self.pki.client.key)
        return context

    async def test_external_with_a_client_certificate(self) -> None:
        """EXTERNAL is offered to a verified certificate; the auth service names the user."""
        backend = await start_backend(self, extensions=(b"PIPELINING", XCLIENT))
        service = await start_auth_service(
            self,
            lambda headers: {
                "Auth-Status": "OK",
                "Auth-Server": "127.0.0.1",
                "Auth-Port": str(backend.port),
                "Auth-User": "juergen@example.org",
            },
        )
        relay = await start_relay(
            self,
            relay_toml(
                service.url,
                listen='tls = "implicit"',
                extra=self.tls_toml(),
                auth='["plain", "external"]',
            ),
        )
        context = self.context(certificate=True)

        def work() -> tuple[bytes, tuple[int, bytes]]:
            client = smtplib.SMTP_SSL(
                "localhost", relay.port, local_hostname="client.test", context=context
            )
            try:
                client.ehlo()
                reply = client.docmd("AUTH", "EXTERNAL =")
                client.sendmail(USER, ["bob@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
                return client.esmtp_features["auth"].strip().encode(), reply
            finally:
                client.close()

        mechanisms, reply = await deferToThread(work)
        self.assertEqual(mechanisms, b"PLAIN EXTERNAL")
        self.assertEqual(reply, (235, b"2.7.0 Authentication successful"))
        [request] = service.requests
        self.assertEqual(request["auth-method"], "external")
        self.assertEqual(request["auth-ssl-verify"], "SUCCESS")
        [xclient] = [c for c in backend.commands if c.startswith(b"XCLIENT")]
        self.assertIn(b" LOGIN=juergen@example.org", xclient)
        self.assertEqual(len(backend.messages), 1)

    async def test_starttls_required_offers_auth_after_tls(self) -> None:
        """On a starttls-required listener AUTH appears, and works, only after STARTTLS."""
        port, service, backend = await submission_setup(
            self, listen='tls = "starttls-required"', extra=self.tls_toml("off")
        )
        context = self.context(certificate=False)

        def work() -> tuple[bool, tuple[int, bytes], str]:
            client = smtplib_client(port)
            try:
                client.ehlo("client.test")
                before = client.has_extn("auth")
                refused = client.docmd("AUTH", "PLAIN " + _b64(b"\0x\0y"))
                client.starttls(context=context)
                client.ehlo("client.test")
                after = client.esmtp_features.get("auth", "").strip()
                client.login(USER, PASSWORD)
                client.sendmail(USER, ["bob@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
                return before, refused, after
            finally:
                client.close()

        before, refused, after = await deferToThread(work)
        self.assertFalse(before)
        self.assertEqual(refused, (530, b"5.7.0 Must issue a STARTTLS command first"))
        self.assertEqual(after, "PLAIN LOGIN CRAM-MD5")
        self.assertEqual(len(service.requests), 1)
        self.assertEqual(len(backend.messages), 1)
