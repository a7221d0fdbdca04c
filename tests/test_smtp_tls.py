"""TLS in the SMTP relay: STARTTLS and implicit TLS at the front, TLS to backends.

Unit tests run the front on a L{StringTransport} whose C{startTLS} only records the call, and the
backend client on one too; integration tests use real sockets on 127.0.0.1 with real clients
(smtplib, openssl s_client, swaks) and a small Twisted ESMTP backend that speaks STARTTLS and
implicit TLS. Certificates come from L{tests.certs}, made at run time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import smtplib
import ssl
import subprocess
from dataclasses import dataclass, field
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint, wrapServerTLS
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, capturedLogs, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override

from relaygate.config.load import parse
from relaygate.config.tls import TLSConfig
from relaygate.listeners import new_server_tls
from relaygate.reactor import IGatewayReactor
from relaygate.smtp.backend import SMTPBackendClient
from relaygate.smtp.factory import SMTPFrontFactory
from relaygate.smtp.front import SMTPFront
from relaygate.tls.server import ServerTLS
from tests.authservice import ok_to, start_auth_service
from tests.certs import PKI, Issued, issue, make_pki
from tests.peers import peer_missing, run_swaks, start_relay
from tests.smtp_harness import FakeRouter

reactor: Any = _global_reactor
_CLOSE_TIMEOUT = 10.0


# -- unit tests: the front on a recording transport -----------------------------------------------


class StartTLSTransport(StringTransport):
    """A L{StringTransport} that records C{startTLS} instead of doing a handshake."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tls_creator: object = None

    def startTLS(self, creator: object) -> None:
        """Remember the creator: the test then calls C{handshakeCompleted} itself."""
        self.tls_creator = creator


def front_config(pki: PKI, tls: str, **sections: Any) -> dict[str, Any]:
    """A config dict with one SMTP listener in TLS mode C{tls}, serving the PKI's server cert."""
    return {
        "server": {"name": "gw.test", "idle_timeout": 30.0, "session_timeout": 600.0},
        "listen": [{"protocol": "smtp", "address": "127.0.0.1:2525", "tls": tls}],
        "tls": {
            "certificate": pki.server.certificate,
            "key": pki.server.key,
            "handshake_timeout": 7.0,
        },
        "route": [{"match": "*", "backends": ["127.0.0.1:2500"]}],
        "smtp": {"xclient": False},
        **sections,
    }


class TLSFront:
    """One front session on a L{StartTLSTransport}, with a clock and a fake router."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.reactor = MemoryReactorClock()
        self.router = FakeRouter()
        loaded = parse(config, os.path.join(os.getcwd(), "test.toml"))
        server_tls = new_server_tls(loaded.listen[0], loaded)
        self.factory = SMTPFrontFactory(
            loaded,
            loaded.listen[0],
            self.router,
            cast(IGatewayReactor, self.reactor),
            server_tls=server_tls,
        )
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.front: SMTPFront = self.factory.buildProtocol(peer)
        self.client = StartTLSTransport(
            peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 2525)
        )
        self.front.makeConnection(self.client)

    def send(self, data: bytes) -> None:
        """The client sends C{data} in one read."""
        self.front.dataReceived(data)

    def replies(self) -> bytes:
        """What the client received since the last call."""
        value: bytes = self.client.value()
        self.client.clear()
        return value


EHLO_PLAIN = (
    b"250-gw.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
EHLO_STARTTLS = (
    b"250-gw.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
)


class FrontStartTLSTests(SynchronousTestCase):
    """STARTTLS at the front: offered, refused, and the plaintext it must forget."""

    def setUp(self) -> None:
        self.pki = make_pki(os.path.abspath(self.mktemp()))

    def session(self, tls: str = "starttls") -> TLSFront:
        """A greeted session on a listener in mode C{tls}."""
        session = TLSFront(front_config(self.pki, tls))
        self.assertEqual(session.replies(), b"220 gw.test ESMTP\r\n")
        return session

    def test_ehlo_offers_starttls(self) -> None:
        """A STARTTLS listener lists STARTTLS in its EHLO reply."""
        s = self.session()
        s.send(b"EHLO client.test\r\n")
        self.assertEqual(s.replies(), EHLO_STARTTLS)

    def test_not_offered_on_plain_listener(self) -> None:
        """A C{tls = "none"} listener neither advertises nor accepts STARTTLS."""
        s = self.session("none")
        s.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        self.assertEqual(s.replies(), EHLO_PLAIN + b"502 5.5.1 Error: command not available\r\n")
        self.assertIsNone(s.client.tls_creator)

    def test_starttls_starts_tls_with_the_listener_creator(self) -> None:
        """STARTTLS answers 220 in plaintext, then starts TLS with the listener's L{ServerTLS}."""
        s = self.session()
        s.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        self.assertEqual(s.replies(), EHLO_STARTTLS + b"220 2.0.0 Ready to start TLS\r\n")
        self.assertIsInstance(s.client.tls_creator, ServerTLS)
        self.assertIs(s.client.tls_creator, s.factory.settings.server_tls)

    def test_pipelined_commands_after_starttls_are_discarded(self) -> None:
        """CVE-2014-3556: a MAIL sent with STARTTLS in one write is never executed."""
        s = self.session()
        s.send(b"EHLO client.test\r\n")
        s.replies()
        with capturedLogs() as events:
            s.send(b"STARTTLS\r\nMAIL FROM:<x@example.org>\r\nRCPT TO:<y@example.org>\r\n")
        self.assertEqual(s.replies(), b"220 2.0.0 Ready to start TLS\r\n")
        discarded = [e for e in events if "pipelined" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in discarded], [52])
        s.front.handshakeCompleted()
        s.send(b"MAIL FROM:<x@example.org>\r\n")
        self.assertEqual(s.replies(), b"503 5.5.1 Error: send HELO/EHLO first\r\n")
        self.assertEqual(s.router.requests, [])

    def test_starttls_resets_the_session(self) -> None:
        """HELO and the open transaction are forgotten: EHLO again, without STARTTLS now."""
        s = self.session()
        s.send(b"EHLO client.test\r\nMAIL FROM:<x@example.org>\r\nSTARTTLS\r\n")
        self.assertTrue(s.replies().endswith(b"250 2.1.0 Ok\r\n220 2.0.0 Ready to start TLS\r\n"))
        s.front.handshakeCompleted()
        s.send(b"RCPT TO:<y@example.org>\r\n")
        self.assertEqual(s.replies(), b"503 5.5.1 Error: need MAIL command\r\n")
        s.send(b"EHLO client.test\r\nMAIL FROM:<x@example.org>\r\n")
        self.assertEqual(s.replies(), EHLO_PLAIN + b"250 2.1.0 Ok\r\n")

    def test_starttls_twice(self) -> None:
        """A second STARTTLS gets 503 5.5.1."""
        s = self.session()
        s.send(b"STARTTLS\r\n")
        s.front.handshakeCompleted()
        s.replies()
        s.send(b"STARTTLS\r\n")
        self.assertEqual(s.replies(), b"503 5.5.1 Error: TLS already active\r\n")

    def test_starttls_with_argument(self) -> None:
        """STARTTLS takes no argument: 501 5.5.4, and TLS does not start."""
        s = self.session()
        s.send(b"STARTTLS now\r\n")
        self.assertEqual(s.replies(), b"501 5.5.4 Syntax: STARTTLS\r\n")
        self.assertIsNone(s.client.tls_creator)

    def test_required_refuses_mail_before_tls(self) -> None:
        """C{starttls-required}: MAIL and AUTH before TLS get exactly nginx's 530."""
        s = self.session("starttls-required")
        s.send(b"EHLO client.test\r\nMAIL FROM:<x@example.org>\r\nAUTH PLAIN\r\n")
        refusal = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
        self.assertEqual(s.replies(), EHLO_STARTTLS + refusal + refusal)
        s.send(b"STARTTLS\r\n")
        s.front.handshakeCompleted()
        s.send(b"EHLO client.test\r\nMAIL FROM:<x@example.org>\r\n")
        self.assertEqual(
            s.replies(), b"220 2.0.0 Ready to start TLS\r\n" + EHLO_PLAIN + b"250 2.1.0 Ok\r\n"
        )

    def test_handshake_timeout_closes(self) -> None:
        """A client that does not finish its handshake in C{handshake_timeout} is cut off."""
        s = self.session()
        s.send(b"STARTTLS\r\n")
        s.reactor.advance(6.9)
        self.assertFalse(s.client.disconnecting)
        s.reactor.advance(0.2)
        self.assertTrue(s.client.disconnecting)
        self.assertEqual(s.front.session.end, "TLS handshake timeout")

    def test_completed_handshake_cancels_the_timeout(self) -> None:
        """After the handshake only the idle timeout applies."""
        s = self.session()
        s.send(b"STARTTLS\r\n")
        s.front.handshakeCompleted()
        s.reactor.advance(8.0)
        self.assertFalse(s.client.disconnecting)

    def test_implicit_greets_after_the_handshake(self) -> None:
        """An implicit-TLS session is greeted once the handshake is done, not before."""
        s = TLSFront(front_config(self.pki, "implicit"))
        self.assertEqual(s.replies(), b"")
        s.front.handshakeCompleted()
        self.assertEqual(s.replies(), b"220 gw.test ESMTP\r\n")
        s.send(b"STARTTLS\r\n")
        self.assertEqual(s.replies(), b"503 5.5.1 Error: TLS already active\r\n")

    def test_implicit_handshake_timeout(self) -> None:
        """An implicit-TLS client that never finishes the handshake is cut off, ungreeted."""
        s = TLSFront(front_config(self.pki, "implicit"))
        s.reactor.advance(7.1)
        self.assertTrue(s.client.disconnecting)
        self.assertEqual(s.replies(), b"")


class BackendStartTLSTests(SynchronousTestCase):
    """The backend client's STARTTLS: plaintext after the 220 never reaches the reply parser."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.client = SMTPBackendClient(b"gw.test", self.clock, 30.0)
        self.transport = StartTLSTransport()
        self.client.makeConnection(self.transport)
        self.client.dataReceived(b"220 backend ESMTP\r\n")
        self.creator = object()

    def test_bytes_after_220_are_discarded(self) -> None:
        """Replies the backend sent after its 220 in the same read are dropped, not parsed."""
        reply = self.client.start_tls(self.creator)  # type: ignore[arg-type]
        self.assertEqual(self.transport.value(), b"STARTTLS\r\n")
        with capturedLogs() as events:
            self.client.dataReceived(b"220 2.0.0 go ahead\r\n250-injected\r\n250 evil\r\n")
        self.assertEqual(self.successResultOf(reply).code, 220)
        self.assertIs(self.transport.tls_creator, self.creator)
        [warning] = [e for e in events if "discarded" in e.get("log_format", "")]
        self.assertEqual(warning["count"], 24)
        handshake = self.client.handshake()
        self.assertNoResult(handshake)
        self.client.handshakeCompleted()
        self.successResultOf(handshake)
        ehlo = self.client.command(b"EHLO gw.test")
        self.assertNoResult(ehlo)
        self.client.dataReceived(b"250 backend\r\n")
        self.assertEqual(self.successResultOf(ehlo).lines, (b"backend",))

    def test_refused_starttls_stays_plaintext(self) -> None:
        """A 454 to STARTTLS starts nothing."""
        reply = self.client.start_tls(self.creator)  # type: ignore[arg-type]
        self.client.dataReceived(b"454 4.7.0 TLS not available\r\n")
        self.assertEqual(self.successResultOf(reply).code, 454)
        self.assertIsNone(self.transport.tls_creator)

    def test_handshake_times_out(self) -> None:
        """A handshake that does not finish within the reply timeout fails the connection."""
        self.client.start_tls(self.creator)  # type: ignore[arg-type]
        self.client.dataReceived(b"220 go ahead\r\n")
        handshake = self.client.handshake()
        self.clock.advance(30.0)
        self.failureResultOf(handshake)
        self.assertFalse(self.client.is_open)


# -- integration: a TLS-capable backend, relaygate and real clients on 127.0.0.1 ------------------


@dataclass
class BackendSession:
    """One connection to a L{TLSBackend}: each command and message, and whether TLS was on."""

    commands: list[tuple[bytes, bool]] = field(default_factory=list)
    messages: list[tuple[bytes, bool]] = field(default_factory=list)
    closed: Deferred[None] = field(default_factory=Deferred)


class _TLSBackendProtocol(LineReceiver):
    """The server side of one L{TLSBackend} connection."""

    def __init__(self, backend: TLSBackend) -> None:
        self.backend = backend
        self.session = BackendSession()
        self.secure = False
        self._body: list[bytes] | None = None

    @override
    def connectionMade(self) -> None:
        self.backend.sessions.append(self.session)
        self.secure = self.backend.implicit
        self.sendLine(b"220 backend.test ESMTP")

    @override
    def lineReceived(self, line: bytes) -> None:
        if self._body is not None:
            if line == b".":
                self.session.messages.append((b"".join(self._body), self.secure))
                self._body = None
                self.sendLine(b"250 2.0.0 Ok: queued")
            else:
                self._body.append(line + b"\r\n")
            return
        self.session.commands.append((line, self.secure))
        verb = line.split(b" ", 1)[0].upper()
        assert self.transport is not None
        if verb == b"EHLO":
            offer = self.backend.offer_starttls and not self.secure
            lines = [b"backend.test", b"PIPELINING", *([b"STARTTLS"] if offer else [])]
            for index, item in enumerate(lines):
                self.sendLine(b"250" + (b" " if index == len(lines) - 1 else b"-") + item)
        elif verb == b"STARTTLS" and self.backend.offer_starttls and not self.secure:
            self.transport.write(b"220 2.0.0 Ready to start TLS\r\n" + self.backend.after_220)
            self.clearLineBuffer()
            self.transport.startTLS(self.backend.creator)  # type: ignore[attr-defined]
            self.secure = True
        elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            self.sendLine(b"250 2.0.0 Ok")
        elif verb == b"DATA":
            self._body = []
            self.sendLine(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 Bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.2 Error: command not recognized")

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.session.closed.callback(None)


class TLSBackend(Factory):
    """A backend SMTP server speaking STARTTLS (or implicit TLS) with a chosen certificate.

    C{after_220} is written right after the 220 to STARTTLS, in the same write, in plaintext:
    what a man in the middle would inject.
    """

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        offer_starttls: bool,
        implicit: bool,
        after_220: bytes,
    ) -> None:
        self.creator = creator
        self.offer_starttls = offer_starttls
        self.implicit = implicit
        self.after_220 = after_220
        self.sessions: list[BackendSession] = []
        self.port = 0

    @override
    def buildProtocol(self, addr: Any) -> _TLSBackendProtocol:
        return _TLSBackendProtocol(self)

    @property
    def messages(self) -> list[tuple[bytes, bool]]:
        """Every message received: its body and whether it came over TLS."""
        return [m for session in self.sessions for m in session.messages]

    def all_closed(self) -> Deferred[Any]:
        """Fires once every connection made so far has closed."""
        return DeferredList([session.closed for session in self.sessions])

    @property
    def verbs(self) -> list[tuple[bytes, bool]]:
        """Every command verb received, with whether it came over TLS."""
        return [(c.split(b" ", 1)[0], tls) for s in self.sessions for c, tls in s.commands]


async def start_tls_backend(
    case: TestCase,
    certificate: Issued,
    offer_starttls: bool = True,
    implicit: bool = False,
    after_220: bytes = b"",
) -> TLSBackend:
    """Listen on 127.0.0.1:0 serving C{certificate}; stopped and waited for at cleanup."""
    creator = ServerTLS(
        TLSConfig(certificate=certificate.certificate, key=certificate.key), "smtp"
    )
    backend = TLSBackend(creator, offer_starttls, implicit, after_220)
    endpoint: Any = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    if implicit:
        endpoint = wrapServerTLS(creator, endpoint)
    port: IListeningPort = await endpoint.listen(backend)
    backend.port = port.getHost().port  # type: ignore[attr-defined]

    async def stop() -> None:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        closing = backend.all_closed()
        closing.addTimeout(_CLOSE_TIMEOUT, reactor)
        await closing

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return backend


def relay_toml(
    pki: PKI,
    listen_tls: str = "none",
    backend: str = "127.0.0.1:9",
    tls: str = "",
    smtp: str = "",
    auth_url: str = "",
) -> str:
    """A relaygate config: one SMTP listener, the PKI's server certificate, one route."""
    routing = (
        f'[auth]\nhttp = "{auth_url}"\n'
        if auth_url
        else (f'[[route]]\nmatch = "*"\nbackends = ["{backend}"]\n')
    )
    tls_table = tls or f'certificate = "{pki.server.certificate}"\nkey = "{pki.server.key}"\n'
    return (
        '[server]\nname = "gw.test"\n'
        f'[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:1"\ntls = "{listen_tls}"\n'
        f"[tls]\n{tls_table}\n{routing}"
        f'[smtp]\nxclient = false\nbackend_ca = "{pki.ca.certificate}"\n{smtp}\n'
    )


def client_context(pki: PKI, certificate: Issued | None = None) -> ssl.SSLContext:
    """What a careful client uses: the test CA, and optionally a client certificate."""
    context = ssl.create_default_context(cafile=pki.ca.certificate)
    if certificate is not None:
        context.load_cert_chain(certificate.certificate, certificate.key)
    return context


MESSAGE = b"Subject: over TLS\r\n\r\nHello.\r\n"


def send_implicit(port: int, context: ssl.SSLContext) -> tuple[dict[str, Any], bytes]:
    """Deliver L{MESSAGE} over SMTP_SSL (in a thread); the refusals and the server certificate."""
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, local_hostname="client.test", context=context, timeout=30
    ) as client:
        refused = client.sendmail("a@client.test", ["b@example.org"], MESSAGE)
        assert isinstance(client.sock, ssl.SSLSocket)
        certificate = client.sock.getpeercert(binary_form=True)
    assert certificate is not None
    return refused, certificate


def send_starttls(port: int, context: ssl.SSLContext) -> dict[str, Any]:
    """Deliver L{MESSAGE} over SMTP with STARTTLS (in a thread); the refusals."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.starttls(context=context)
        return client.sendmail("a@client.test", ["b@example.org"], MESSAGE)


def transaction_events(events: list[LogEvent]) -> list[LogEvent]:
    """The access-log events of SMTP transactions."""
    return [e for e in events if e.get("kind") == "smtp.transaction"]


class IntegrationCase(TestCase):
    """A fresh PKI per test, and every log event collected in C{self.events}."""

    def setUp(self) -> None:
        self.pki = make_pki(os.path.abspath(self.mktemp()))
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)


class FrontTLSIntegrationTests(IntegrationCase):
    """Real clients reach a real backend through relaygate's TLS listeners."""

    async def test_smtplib_implicit_tls_delivers(self) -> None:
        """smtplib's SMTP_SSL delivers through an implicit listener; the log names the TLS."""
        backend = await start_tls_backend(self, self.pki.server, offer_starttls=False)
        relay = await start_relay(
            self, relay_toml(self.pki, "implicit", f"127.0.0.1:{backend.port}")
        )
        refused, _ = await deferToThread(send_implicit, relay.port, client_context(self.pki))
        self.assertEqual(refused, {})
        self.assertEqual(backend.messages, [(MESSAGE, False)])
        [event] = transaction_events(self.events)
        self.assertRegex(event["tls"], r"^TLSv1\.3 TLS_[A-Z0-9_]+$")
        self.assertEqual(event["backend_tls"], "")

    async def test_smtplib_starttls_delivers(self) -> None:
        """smtplib's starttls() then sendmail delivers through a STARTTLS listener."""
        backend = await start_tls_backend(self, self.pki.server, offer_starttls=False)
        relay = await start_relay(
            self, relay_toml(self.pki, "starttls-required", f"127.0.0.1:{backend.port}")
        )
        refused = await deferToThread(send_starttls, relay.port, client_context(self.pki))
        self.assertEqual(refused, {})
        self.assertEqual(backend.messages, [(MESSAGE, False)])

    async def test_swaks_starttls(self) -> None:
        """swaks --tls delivers; its transcript shows the 220 to STARTTLS."""
        backend = await start_tls_backend(self, self.pki.server, offer_starttls=False)
        relay = await start_relay(
            self, relay_toml(self.pki, "starttls", f"127.0.0.1:{backend.port}")
        )
        result = await run_swaks(
            "--server", f"127.0.0.1:{relay.port}", "--tls", "--helo", "client.test",
            "--from", "a@client.test", "--to", "b@example.org",
        )  # fmt: skip
        if "requires Net::SSLeay" in result.out + result.err:
            peer_missing("swaks --tls's Net::SSLeay", "libnet-ssleay-perl")
        self.assertEqual(result.code, 0, result.out + result.err)
        self.assertIn("<-  220 2.0.0 Ready to start TLS", result.out)
        self.assertIn("<~  250 2.0.0 Ok: queued", result.out)
        self.assertEqual(len(backend.messages), 1)

    async def s_client(self, port: int, *args: str) -> str:
        """Run C{openssl s_client -starttls smtp} against C{port}; its output."""
        command = [
            "openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
            "-ign_eof", "-CAfile", self.pki.ca.certificate, *args,
        ]  # fmt: skip
        result = await deferToThread(
            subprocess.run, command, input=b"QUIT\n", capture_output=True, timeout=60
        )
        return (result.stdout + result.stderr).decode(errors="replace")

    async def test_s_client_sni_picks_the_certificate(self) -> None:
        """openssl s_client -starttls smtp -servername gets each name's certificate, verified."""
        directory = os.path.join(self.pki.directory, "sni")
        os.mkdir(directory)
        shutil.copyfile(self.pki.server.combined, os.path.join(directory, "default.pem"))
        shutil.copyfile(self.pki.other.combined, os.path.join(directory, "other.example.net.pem"))
        relay = await start_relay(
            self, relay_toml(self.pki, "starttls", tls=f'certificate = "{directory}"\n')
        )
        for name, common_name in [
            ("other.example.net", "CN = other.example.net"),
            ("mail.example.org", "CN = localhost"),
        ]:
            output = await self.s_client(relay.port, "-servername", name, "-verify_hostname", name)
            self.assertIn(common_name, output)
            self.assertIn("Verify return code: 0 (ok)", output)
            self.assertIn("221 2.0.0 gw.test Bye", output)

    async def test_directory_certificate_rotation(self) -> None:
        """A renewed C{NAME.pem} in the SNI directory serves the next connection, no restart."""
        backend = await start_tls_backend(self, self.pki.server, offer_starttls=False)
        directory = os.path.join(self.pki.directory, "sni")
        os.mkdir(directory)
        shutil.copyfile(self.pki.server.combined, os.path.join(directory, "default.pem"))
        relay = await start_relay(
            self,
            relay_toml(
                self.pki,
                "implicit",
                f"127.0.0.1:{backend.port}",
                tls=f'certificate = "{directory}"\n',
            ),
        )
        context = client_context(self.pki)
        _, first = await deferToThread(send_implicit, relay.port, context)
        self.assertEqual(first, self.pki.server.cert.public_bytes(serialization.Encoding.DER))
        renewed = issue(self.pki.ca, self.pki.directory, "renewed", ["localhost"], ["127.0.0.1"])
        shutil.copyfile(renewed.combined, os.path.join(directory, "default.pem.new"))
        os.replace(
            os.path.join(directory, "default.pem.new"), os.path.join(directory, "default.pem")
        )
        _, second = await deferToThread(send_implicit, relay.port, context)
        self.assertEqual(second, renewed.cert.public_bytes(serialization.Encoding.DER))
        self.assertEqual(len(backend.messages), 2)


class ClientCertificateIntegrationTests(IntegrationCase):
    """Client certificates: nginx's Auth-SSL-* headers, and nginx's refusals."""

    def client_ca_tls(self, verify: str) -> str:
        """A C{[tls]} table asking for client certificates from the test CA."""
        return (
            f'certificate = "{self.pki.server.certificate}"\nkey = "{self.pki.server.key}"\n'
            f'client_ca = "{self.pki.ca.certificate}"\nverify_client = "{verify}"\n'
        )

    async def test_client_certificate_reaches_the_auth_service(self) -> None:
        """The auth service gets nginx's exact Auth-SSL-* headers for the client's certificate."""
        backend = await start_tls_backend(self, self.pki.server, offer_starttls=False)
        auth = await start_auth_service(self, ok_to("127.0.0.1", backend.port))
        relay = await start_relay(
            self,
            relay_toml(
                self.pki, "implicit", tls=self.client_ca_tls("optional"), auth_url=auth.url
            ),
        )
        context = client_context(self.pki, self.pki.client)
        refused, _ = await deferToThread(send_implicit, relay.port, context)
        self.assertEqual(refused, {})
        [headers] = auth.requests
        certificate = self.pki.client.cert
        der = certificate.public_bytes(serialization.Encoding.DER)
        serial = f"{certificate.serial_number:X}"
        serial = "0" * (len(serial) % 2) + serial
        ssl_headers = {k: v for k, v in headers.items() if k.startswith("auth-ssl")}
        self.assertEqual(
            ssl_headers,
            {
                "auth-ssl": "on",
                "auth-ssl-protocol": "TLSv1.3",
                "auth-ssl-cipher": ssl_headers["auth-ssl-cipher"],
                "auth-ssl-verify": "SUCCESS",
                "auth-ssl-subject": "CN=J\\C3\\BCrgen M\\C3\\BCller,O=Acme\\, Inc.,C=DE",
                "auth-ssl-issuer": "CN=relaygate test CA,O=relaygate tests,C=DE",
                "auth-ssl-serial": serial,
                "auth-ssl-fingerprint": hashlib.sha1(der, usedforsecurity=False).hexdigest(),
            },
        )
        self.assertTrue(ssl_headers["auth-ssl-cipher"].startswith("TLS_"))
        [event] = transaction_events(self.events)
        self.assertTrue(event["tls"].endswith(" verify=SUCCESS"), event["tls"])

    async def test_required_certificate_missing(self) -> None:
        """An implicit-TLS client without a required certificate gets nginx's 421, ungreeted."""
        relay = await start_relay(
            self, relay_toml(self.pki, "implicit", tls=self.client_ca_tls("required"))
        )

        def connect() -> tuple[int, bytes | str]:
            try:
                smtplib.SMTP_SSL("127.0.0.1", relay.port, context=client_context(self.pki))
            except smtplib.SMTPConnectError as e:
                return e.smtp_code, e.smtp_error
            raise AssertionError("greeted without a certificate")

        self.assertEqual(await deferToThread(connect), (421, b"4.7.1 No required SSL certificate"))

    async def test_untrusted_certificate_after_starttls(self) -> None:
        """After STARTTLS, an unknown CA's certificate gets nginx's reply to the next command."""
        relay = await start_relay(
            self, relay_toml(self.pki, "starttls", tls=self.client_ca_tls("optional"))
        )

        def converse() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
                client.starttls(context=client_context(self.pki, self.pki.untrusted))
                reply: tuple[int, bytes] = client.docmd("EHLO", "client.test")
                return reply

        self.assertEqual(await deferToThread(converse), (421, b"4.7.1 SSL certificate error"))


class BackendTLSIntegrationTests(IntegrationCase):
    """TLS to a real backend: verified, never falling back to plaintext."""

    async def relay_to(self, backend: TLSBackend, mode: str, host: str = "127.0.0.1") -> int:
        """Start relaygate routing everything to C{backend} with C{backend_tls = mode}."""
        relay = await start_relay(
            self,
            relay_toml(
                self.pki, "none", f"{host}:{backend.port}", smtp=f'backend_tls = "{mode}"\n'
            ),
        )
        return relay.port

    def send(self, port: int) -> Deferred[dict[str, Any]]:
        """Deliver L{MESSAGE} in plaintext from the client's side; the refusals."""

        def send() -> dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
                try:
                    return c.sendmail("a@client.test", ["b@example.org"], MESSAGE)
                except smtplib.SMTPRecipientsRefused as e:
                    return dict(e.recipients)

        return deferToThread(send)

    async def test_required_without_starttls_offered(self) -> None:
        """C{required} and a backend without STARTTLS: 451 4.7.5, nothing but EHLO sent."""
        backend = await start_tls_backend(self, self.pki.server, offer_starttls=False)
        refused = await self.send(await self.relay_to(backend, "required"))
        self.assertEqual(
            refused,
            {
                "b@example.org": (
                    451,
                    b"4.7.5 TLS is required, but the mail server does not offer it",
                )
            },
        )
        self.assertEqual(backend.messages, [])
        await backend.all_closed()
        self.assertEqual([verb for verb, _ in backend.verbs], [b"EHLO", b"QUIT"])

    async def assert_refused_certificate(self, certificate: Issued, mode: str) -> None:
        """A backend serving C{certificate} fails verification: 451 4.7.5, nothing delivered."""
        backend = await start_tls_backend(self, certificate)
        refused = await self.send(await self.relay_to(backend, mode))
        self.assertEqual(
            refused,
            {"b@example.org": (451, b"4.7.5 TLS with the mail server failed, try again later")},
        )
        self.assertEqual(backend.messages, [])
        await backend.all_closed()
        self.assertEqual(backend.verbs, [(b"EHLO", False), (b"STARTTLS", False)])

    async def test_required_wrong_name(self) -> None:
        """A backend certificate without the route's host: 4xx and nothing delivered."""
        await self.assert_refused_certificate(self.pki.wrong_name, "required")

    async def test_required_expired(self) -> None:
        """An expired backend certificate: 4xx and nothing delivered."""
        await self.assert_refused_certificate(self.pki.expired, "required")

    async def test_opportunistic_unknown_ca(self) -> None:
        """C{opportunistic} verifies too: a certificate from an unknown CA gets a 4xx."""
        await self.assert_refused_certificate(self.pki.untrusted, "opportunistic")

    async def test_opportunistic_uses_starttls_when_offered(self) -> None:
        """C{opportunistic}: STARTTLS, EHLO again, and the message goes over verified TLS."""
        backend = await start_tls_backend(self, self.pki.server)
        refused = await self.send(await self.relay_to(backend, "opportunistic"))
        self.assertEqual(refused, {})
        self.assertEqual(backend.messages, [(MESSAGE, True)])
        await backend.all_closed()
        self.assertEqual(
            backend.verbs,
            [
                (b"EHLO", False),
                (b"STARTTLS", False),
                (b"EHLO", True),
                (b"MAIL", True),
                (b"RCPT", True),
                (b"DATA", True),
                (b"QUIT", True),
            ],
        )
        [event] = transaction_events(self.events)
        self.assertRegex(event["backend_tls"], r"^TLSv1\.3 TLS_[A-Z0-9_]+ verified$")

    async def test_opportunistic_without_starttls_is_plaintext(self) -> None:
        """C{opportunistic} and no STARTTLS offered: delivered in plaintext."""
        backend = await start_tls_backend(self, self.pki.server, offer_starttls=False)
        refused = await self.send(await self.relay_to(backend, "opportunistic"))
        self.assertEqual(refused, {})
        self.assertEqual(backend.messages, [(MESSAGE, False)])

    async def test_required_verifies_a_host_name(self) -> None:
        """A route naming the backend by host name is verified against that name."""
        backend = await start_tls_backend(self, self.pki.server)
        refused = await self.send(await self.relay_to(backend, "required", "localhost"))
        self.assertEqual(refused, {})
        self.assertEqual(backend.messages, [(MESSAGE, True)])

    async def test_implicit(self) -> None:
        """C{implicit}: TLS from the first byte, verified, and the message delivered."""
        backend = await start_tls_backend(
            self, self.pki.server, offer_starttls=False, implicit=True
        )
        refused = await self.send(await self.relay_to(backend, "implicit"))
        self.assertEqual(refused, {})
        self.assertEqual(backend.messages, [(MESSAGE, True)])
        [event] = transaction_events(self.events)
        self.assertTrue(event["backend_tls"].endswith(" verified"), event["backend_tls"])

    async def test_implicit_wrong_name(self) -> None:
        """C{implicit} with a wrong-name certificate: 451 4.7.5, nothing delivered."""
        backend = await start_tls_backend(
            self, self.pki.wrong_name, offer_starttls=False, implicit=True
        )
        refused = await self.send(await self.relay_to(backend, "implicit"))
        self.assertEqual(
            refused,
            {"b@example.org": (451, b"4.7.5 TLS with the mail server failed, try again later")},
        )
        self.assertEqual(backend.messages, [])
        self.assertEqual(backend.verbs, [])

    async def test_bytes_after_the_220_are_discarded(self) -> None:
        """Replies injected after the backend's 220 to STARTTLS are dropped; delivery works."""
        backend = await start_tls_backend(
            self, self.pki.server, after_220=b"250-injected\r\n250 evil\r\n"
        )
        refused = await self.send(await self.relay_to(backend, "required"))
        self.assertEqual(refused, {})
        self.assertEqual(backend.messages, [(MESSAGE, True)])
        discarded = [e for e in self.events if "after its 220" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in discarded], [24])
