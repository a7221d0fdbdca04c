"""TLS for the IMAP and POP3 fronts: STARTTLS/STLS, implicit TLS, client certificates, and
TLS to the backends; in memory, and against real clients, openssl and a TLS-speaking Dovecot."""

from __future__ import annotations

import atexit
import base64
import imaplib
import os
import poplib
import shutil
import ssl
import subprocess
import tempfile
from typing import Any, cast

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override
from zope.interface import implementer

from relaygate import service as service_module
from relaygate.addresses import HostPort
from relaygate.config.errors import ConfigError
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.imap import IMAPFrontFactory
from relaygate.listeners import new_server_tls
from relaygate.login import LoginFront
from relaygate.pop3 import POP3FrontFactory
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Accept, AuthRequest, Router
from relaygate.routing.table import TableRouter
from relaygate.service import build_service
from relaygate.tls.client import trust_root
from relaygate.tls.server import ServerTLS
from tests.certs import PKI, Issued, issue, make_pki
from tests.dovecot import Dovecot, dovecot_for
from tests.fronts import (
    Gateway,
    RawClient,
    ScriptedRouter,
    config_for,
    make_config,
    start_gateway,
    take,
    tls_section,
)

ADDRESS = HostPort("127.0.0.1", 1143)
BACKEND = HostPort("127.0.0.1", 9143)
IMAP_CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID"


class TLSStringTransport(StringTransport):
    """A L{StringTransport} that records C{startTLS}: the creator, and what was written before.

    The handshake itself is the test's to play: it calls the protocol's C{handshakeCompleted}
    (or C{connectionLost} with an L{SSL.Error}).
    """

    def __init__(self, host: HostPort, peer: HostPort) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", host.host, host.port),
            peerAddress=IPv4Address("TCP", peer.host, peer.port),
        )
        self.tls_creator: object = None
        self.before_tls = b""

    def startTLS(self, contextFactory: object, normal: bool = True) -> None:  # noqa: N803
        """Record the switch to TLS instead of doing it."""
        self.tls_creator = contextFactory
        self.before_tls = self.value()


def listen(protocol: str, tls: str) -> ListenConfig:
    """A listener of C{protocol} with TLS mode C{tls} (the fronts read C{protocol} and C{tls})."""
    return ListenConfig(protocol=protocol, address=ADDRESS, tls=tls)


class TLSFrontTestCase(SynchronousTestCase):
    """Fronts on a memory reactor with a scripted router, a test PKI and recorded TLS switches."""

    protocol = "imap"

    def setUp(self) -> None:
        self.pki = make_pki(os.path.abspath(self.mktemp()))
        self.reactor = MemoryReactorClock()
        self.router = ScriptedRouter()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def config(self, tls: dict[str, Any] | None = None, **section: Any) -> Config:
        """A config with the test PKI's server certificate and C{section} as [imap]/[pop3]."""
        if self.protocol == "pop3":
            section.setdefault("auth", ["user", "plain", "external"])
        else:
            section.setdefault("auth", ["plain", "login", "external"])
        tls_settings = {"verify_client": "optional", **(tls or {})}
        return make_config(
            **{self.protocol: section},
            auth={"http": "http://127.0.0.1:1/auth"},
            tls=tls_section(self.pki, **tls_settings),
        )

    def factory(self, mode: str = "starttls", **section: Any) -> Factory:
        config = self.config(**section)
        self.listener = listen(self.protocol, mode)
        self.server_tls = new_server_tls(self.listener, config)
        server_tls = self.server_tls
        if self.protocol == "pop3":
            return POP3FrontFactory(
                config, self.listener, self.router, self.reactor, lambda: 42, server_tls=server_tls
            )
        return IMAPFrontFactory(
            config, self.listener, self.router, self.reactor, lambda: 42, server_tls=server_tls
        )

    def front(self, mode: str = "starttls", **section: Any) -> tuple[Any, TLSStringTransport]:
        front = self.factory(mode, **section).buildProtocol(None)
        assert front is not None
        transport = TLSStringTransport(ADDRESS, HostPort("192.0.2.7", 40000))
        front.makeConnection(transport)
        return front, transport

    def backend(self, index: int = -1) -> tuple[Any, TLSStringTransport]:
        """Complete the outgoing backend connection the front asked for."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = TLSStringTransport(HostPort("127.0.0.1", 50000), HostPort(host, port))
        protocol.makeConnection(transport)
        return protocol, transport

    def access_events(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace") == "relaygate.access"]


class IMAPStartTLSTests(TLSFrontTestCase):
    """IMAP STARTTLS at the front (RFC 3501 6.2.1, RFC 2595)."""

    def test_starttls_advertised_then_not(self) -> None:
        """STARTTLS is in the capabilities before TLS only."""
        front, transport = self.front()
        self.assertEqual(
            take(transport),
            b"* OK [CAPABILITY " + IMAP_CAPS + b" AUTH=PLAIN AUTH=LOGIN STARTTLS] "
            b"gw.example.org ready\r\n",
        )
        front.dataReceived(b"a STARTTLS\r\n")
        self.assertEqual(take(transport), b"a OK Begin TLS negotiation now\r\n")
        self.assertIs(transport.tls_creator, self.server_tls)
        self.assertIsInstance(self.server_tls, ServerTLS)
        front.handshakeCompleted()
        front.dataReceived(b"b CAPABILITY\r\n")
        self.assertEqual(
            take(transport),
            b"* CAPABILITY " + IMAP_CAPS + b" AUTH=PLAIN AUTH=LOGIN\r\nb OK completed\r\n",
        )

    def test_pipelined_login_after_starttls_is_discarded(self) -> None:
        """C{a STARTTLS} and C{b LOGIN} in one write: the LOGIN is never executed."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a STARTTLS\r\nb LOGIN u p\r\n")
        self.assertEqual(take(transport), b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(transport.before_tls, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(self.router.requests, [])
        front.handshakeCompleted()
        self.assertEqual(take(transport), b"")
        self.assertEqual(self.router.requests, [])
        front.dataReceived(b"c LOGIN u p\r\n")
        [request] = self.router.requests
        self.assertEqual((request.user, request.password), (b"u", b"p"))

    def test_pipelined_partial_literal_is_discarded(self) -> None:
        """A half-sent command after STARTTLS does not continue over TLS."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a STARTTLS\r\nb LOGIN u {5}\r\n")
        self.assertEqual(take(transport), b"a OK Begin TLS negotiation now\r\n")
        front.handshakeCompleted()
        front.dataReceived(b"pw\r\nc NOOP\r\n")
        self.assertEqual(take(transport), b"pw BAD expected a space\r\nc OK completed\r\n")
        self.assertEqual(self.router.requests, [])

    def test_starttls_required_disables_login_until_tls(self) -> None:
        """LOGINDISABLED and no AUTH= before TLS; after it, LOGIN reaches the router."""
        front, transport = self.front("starttls-required")
        self.assertIn(b"[CAPABILITY " + IMAP_CAPS + b" STARTTLS LOGINDISABLED]", take(transport))
        front.dataReceived(b"a LOGIN u p\r\nb AUTHENTICATE PLAIN AHUAcA==\r\n")
        self.assertEqual(
            take(transport),
            b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
            b"b NO [PRIVACYREQUIRED] Use STARTTLS first\r\n",
        )
        front.dataReceived(b"c STARTTLS\r\n")
        front.handshakeCompleted()
        take(transport)
        front.dataReceived(b"d CAPABILITY\r\ne LOGIN u p\r\n")
        self.assertEqual(
            take(transport),
            b"* CAPABILITY " + IMAP_CAPS + b" AUTH=PLAIN AUTH=LOGIN\r\nd OK completed\r\n",
        )
        self.assertEqual(len(self.router.requests), 1)

    def test_starttls_refused_when_active_or_with_arguments(self) -> None:
        """A second STARTTLS, or one with arguments, is BAD."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"a STARTTLS now\r\n")
        self.assertEqual(take(transport), b"a BAD invalid command\r\n")
        front.dataReceived(b"b STARTTLS\r\n")
        front.handshakeCompleted()
        take(transport)
        front.dataReceived(b"c STARTTLS\r\n")
        self.assertEqual(take(transport), b"c BAD invalid command\r\n")

    def test_not_offered_without_starttls_listener(self) -> None:
        """On C{tls = "none"} there is no STARTTLS in the capabilities and the command is BAD."""
        front, transport = self.front("none")
        self.assertNotIn(b"STARTTLS", take(transport))
        front.dataReceived(b"a STARTTLS\r\n")
        self.assertEqual(take(transport), b"a BAD invalid command\r\n")
        self.assertIsNone(transport.tls_creator)

    def test_handshake_timeout(self) -> None:
        """A client that does not finish the handshake is cut off after handshake_timeout."""
        front, transport = self.front(tls={"handshake_timeout": 5.0})
        take(transport)
        front.dataReceived(b"a STARTTLS\r\n")
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(take(transport), b"a OK Begin TLS negotiation now\r\n")
        front.connectionLost(Failure(Exception("aborted")))
        [event] = self.access_events()
        self.assertEqual(event["outcome"], "TLS handshake timeout")

    def test_implicit_greets_after_handshake(self) -> None:
        """An implicit-TLS listener's greeting waits for the handshake and offers no STARTTLS."""
        front, transport = self.front("implicit", tls={"handshake_timeout": 5.0})
        self.assertEqual(take(transport), b"")
        front.handshakeCompleted()
        self.assertEqual(
            take(transport),
            b"* OK [CAPABILITY " + IMAP_CAPS + b" AUTH=PLAIN AUTH=LOGIN] gw.example.org ready\r\n",
        )
        self.reactor.advance(10)
        self.assertFalse(transport.disconnecting)

    def test_implicit_handshake_timeout(self) -> None:
        """An implicit-TLS client that never handshakes is cut off."""
        _, transport = self.front("implicit", tls={"handshake_timeout": 5.0})
        self.reactor.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(take(transport), b"")

    def test_external_needs_verified_certificate(self) -> None:
        """Without a verified client certificate EXTERNAL is neither offered nor accepted."""
        front, transport = self.front()
        self.assertNotIn(b"AUTH=EXTERNAL", take(transport))
        front.dataReceived(b"a STARTTLS\r\n")
        front.handshakeCompleted()
        take(transport)
        front.dataReceived(b"b AUTHENTICATE EXTERNAL =\r\n")
        self.assertEqual(take(transport), b"b NO EXTERNAL needs a verified client certificate\r\n")
        self.assertEqual(self.router.requests, [])


class POP3StartTLSTests(TLSFrontTestCase):
    """POP3 STLS at the front (RFC 2595 section 4)."""

    protocol = "pop3"

    def test_stls_in_capa_before_tls_only(self) -> None:
        """CAPA lists STLS before TLS only."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"CAPA\r\n")
        self.assertEqual(
            take(transport),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
            b"USER\r\nSASL PLAIN\r\nSTLS\r\n.\r\n",
        )
        front.dataReceived(b"STLS\r\n")
        self.assertEqual(take(transport), b"+OK\r\n")
        self.assertIs(transport.tls_creator, self.server_tls)
        front.handshakeCompleted()
        front.dataReceived(b"CAPA\r\n")
        self.assertNotIn(b"STLS", take(transport))

    def test_pipelined_user_after_stls_is_discarded(self) -> None:
        """C{STLS} and C{USER u} in one write: the USER is never executed."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"STLS\r\nUSER u\r\nPASS p\r\n")
        self.assertEqual(take(transport), b"+OK\r\n")
        front.handshakeCompleted()
        front.dataReceived(b"PASS p\r\n")
        self.assertEqual(take(transport), b"-ERR invalid command\r\n")
        self.assertEqual(self.router.requests, [])

    def test_starttls_required_refuses_logins_before_tls(self) -> None:
        """USER, APOP and AUTH get nginx's C{-ERR} before TLS; CAPA offers only STLS."""
        front, transport = self.front("starttls-required")
        take(transport)
        front.dataReceived(b"CAPA\r\nUSER u\r\nAUTH PLAIN AHUAcA==\r\n")
        self.assertEqual(
            take(transport),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
            b"STLS\r\n.\r\n-ERR invalid command\r\n-ERR invalid command\r\n",
        )
        front.dataReceived(b"STLS\r\n")
        front.handshakeCompleted()
        take(transport)
        front.dataReceived(b"USER u\r\nPASS p\r\n")
        self.assertEqual(take(transport), b"+OK\r\n")
        [request] = self.router.requests
        self.assertEqual((request.user, request.password), (b"u", b"p"))

    def test_stls_not_offered_on_plain_listener(self) -> None:
        """On C{tls = "none"} CAPA has no STLS and STLS is C{-ERR}."""
        front, transport = self.front("none")
        take(transport)
        front.dataReceived(b"CAPA\r\nSTLS\r\n")
        output = take(transport)
        self.assertNotIn(b"STLS\r\n.", output)
        self.assertTrue(output.endswith(b".\r\n-ERR invalid command\r\n"))
        self.assertIsNone(transport.tls_creator)

    def test_stls_twice_refused(self) -> None:
        """STLS once TLS is up is C{-ERR}."""
        front, transport = self.front()
        take(transport)
        front.dataReceived(b"STLS\r\n")
        front.handshakeCompleted()
        take(transport)
        front.dataReceived(b"STLS\r\n")
        self.assertEqual(take(transport), b"-ERR invalid command\r\n")

    def test_implicit_greets_after_handshake(self) -> None:
        """The POP3 greeting on an implicit-TLS listener waits for the handshake."""
        front, transport = self.front("implicit")
        self.assertEqual(take(transport), b"")
        front.handshakeCompleted()
        self.assertEqual(take(transport), b"+OK POP3 ready\r\n")


@implementer(IOpenSSLClientConnectionCreator)
class _Client:
    """Verifies the gateway as C{localhost} against the test CA, with an optional certificate."""

    def __init__(self, pki: PKI, certificate: Issued | None) -> None:
        client = None
        if certificate is not None:
            with open(certificate.certificate, "rb") as f, open(certificate.key, "rb") as k:
                client = PrivateCertificate.loadPEM(f.read() + k.read())
        self._inner = optionsForClientTLS(
            "localhost", trustRoot=trust_root(pki.ca.certificate), clientCertificate=client
        )

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._inner.clientConnectionForTLS(tls_protocol)
        return connection


class _Collect(Protocol):
    """Records what the gateway sends over TLS."""

    def __init__(self) -> None:
        self.received = b""
        self.closed = False

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True


class ImplicitInMemoryTests(TLSFrontTestCase):
    """Real TLS handshakes in memory (iosim): implicit-TLS listeners, client certificates."""

    def connect(
        self, protocol: str, verify_client: str, certificate: Issued | None
    ) -> tuple[LoginFront, _Collect, IOPump]:
        self.protocol = protocol
        config = self.config(tls={"verify_client": verify_client})
        listener = listen(protocol, "implicit")
        server_tls = new_server_tls(listener, config)
        assert server_tls is not None
        front_factory: Factory
        if protocol == "pop3":
            front_factory = POP3FrontFactory(
                config, listener, self.router, self.reactor, server_tls=server_tls
            )
        else:
            front_factory = IMAPFrontFactory(
                config, listener, self.router, self.reactor, server_tls=server_tls
            )
        fronts: list[LoginFront] = []
        original = front_factory.buildProtocol

        def build(addr: Any) -> Any:
            front = original(addr)
            fronts.append(front)
            return front

        front_factory.buildProtocol = build  # type: ignore[method-assign]
        server_factory = TLSMemoryBIOFactory(server_tls, False, front_factory, clock=self.reactor)
        collect = _Collect()
        client_factory = TLSMemoryBIOFactory(
            _Client(self.pki, certificate),
            True,
            Factory.forProtocol(lambda: collect),
            clock=self.reactor,
        )
        _, _, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000)),
            lambda: client_factory.buildProtocol(None),
            clock=self.reactor,
        )
        pump.flush()
        [front] = fronts
        return front, collect, pump

    def stranger(self) -> Issued:
        """A client certificate from a CA the gateway does not trust."""
        return issue(self.pki.unknown_ca, self.pki.directory, "stranger", client=True)

    def test_imap_required_certificate_missing(self) -> None:
        """C{verify_client = "required"} without a certificate: nginx's C{* BYE} and a close."""
        _, client, _ = self.connect("imap", "required", None)
        self.assertEqual(client.received, b"* BYE No required SSL certificate\r\n")
        self.assertTrue(client.closed)
        [event] = self.access_events()
        self.assertEqual(event["outcome"], "client certificate: no_cert")

    def test_imap_untrusted_certificate(self) -> None:
        """A certificate that fails verification: nginx's C{* BYE SSL certificate error}."""
        _, client, _ = self.connect("imap", "optional", self.stranger())
        self.assertEqual(client.received, b"* BYE SSL certificate error\r\n")
        self.assertTrue(client.closed)

    def test_pop3_certificate_replies(self) -> None:
        """The POP3 replies are nginx's C{-ERR} ones."""
        _, client, _ = self.connect("pop3", "required", None)
        self.assertEqual(client.received, b"-ERR No required SSL certificate\r\n")
        self.assertTrue(client.closed)
        _, client, _ = self.connect("pop3", "optional", self.stranger())
        self.assertEqual(client.received, b"-ERR SSL certificate error\r\n")

    def test_imap_client_certificate_reaches_router_and_external(self) -> None:
        """A verified certificate: AUTH=EXTERNAL is offered, and the router sees Auth-SSL-*."""
        _, client, pump = self.connect("imap", "required", self.pki.client)
        self.assertIn(b"AUTH=EXTERNAL] gw.example.org ready\r\n", client.received)
        assert client.transport is not None
        client.transport.write(b"a AUTHENTICATE EXTERNAL =\r\n")
        pump.flush()
        [request] = self.router.requests
        self.assertEqual((request.method, request.user, request.password), ("external", b"", b""))
        self.assert_verified(request)

    def test_pop3_client_certificate_reaches_router_and_external(self) -> None:
        """POP3: SASL EXTERNAL is offered with a verified certificate; USER/PASS carries TLS."""
        _, client, pump = self.connect("pop3", "optional", self.pki.client)
        assert client.transport is not None
        client.transport.write(b"CAPA\r\nAUTH EXTERNAL " + base64.b64encode(b"bob") + b"\r\n")
        pump.flush()
        self.assertIn(b"SASL PLAIN EXTERNAL\r\n", client.received)
        [request] = self.router.requests
        self.assertEqual((request.method, request.user), ("external", b"bob"))
        self.assert_verified(request)

    def assert_verified(self, request: AuthRequest) -> None:
        tls = request.tls
        assert tls is not None
        self.assertEqual(tls.verify, "SUCCESS")
        self.assertEqual(tls.subject, "CN=J\\C3\\BCrgen M\\C3\\BCller,O=Acme\\, Inc.,C=DE")
        self.assertTrue(tls.protocol.startswith("TLSv1."))
        self.assertTrue(tls.fingerprint)

    def test_external_user_from_router(self) -> None:
        """After EXTERNAL the router's Auth-User and Auth-Pass log in at the backend."""
        _, client, pump = self.connect("imap", "required", self.pki.client)
        self.router.answer = lambda r: Accept((BACKEND,), user=b"alice", password=b"pw")
        assert client.transport is not None
        client.transport.write(b"a AUTHENTICATE EXTERNAL\r\n")
        pump.flush()
        self.assertIn(b"+ VXNlcm5hbWU6\r\n", client.received)
        client.transport.write(b"\r\n")
        pump.flush()
        backend, backend_transport = self.backend()
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" "pw"\r\n')

    def test_external_without_user_needs_auth_user(self) -> None:
        """An EXTERNAL login the router accepts without naming a user is an internal error."""
        _, client, pump = self.connect("imap", "required", self.pki.client)
        self.router.answer = lambda r: Accept((BACKEND,), password=b"pw")
        assert client.transport is not None
        client.transport.write(b"a AUTHENTICATE EXTERNAL =\r\n")
        pump.flush()
        self.assertTrue(client.received.endswith(b"* BAD internal server error\r\n"))
        self.assertEqual(self.reactor.tcpClients, [])


class IMAPBackendTLSTests(TLSFrontTestCase):
    """IMAP STARTTLS to the backend (C{[imap] backend_tls})."""

    def login(self, mode: str, **section: Any) -> tuple[Any, Any, TLSStringTransport]:
        """A client logged in as alice, the route accepted, the backend connected."""
        front, transport = self.front(
            "none", backend_tls=mode, backend_ca=self.pki.ca.certificate, **section
        )
        take(transport)
        self.router.answer = lambda r: Accept((BACKEND,))
        front.dataReceived(b"a LOGIN alice pw\r\n")
        backend, backend_transport = self.backend()
        self.client_transport = transport
        return front, backend, backend_transport

    def test_required_starttls_before_anything_else(self) -> None:
        """STARTTLS first; what followed its OK is dropped; CAPABILITY, ID, LOGIN over TLS."""
        _, backend, backend_transport = self.login("required")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED ID] hi\r\n")
        self.assertEqual(take(backend_transport), b"R1 STARTTLS\r\n")
        backend.dataReceived(b"R1 OK Begin TLS negotiation now.\r\nR2 OK injected\r\n")
        self.assertEqual(backend_transport.before_tls, b"")
        self.assertIsNotNone(backend_transport.tls_creator)
        self.assertEqual(take(backend_transport), b"")
        backend.handshakeCompleted()
        self.assertEqual(take(backend_transport), b"R2 CAPABILITY\r\n")
        backend.dataReceived(
            b"* CAPABILITY IMAP4rev1 ID LITERAL+ AUTH=PLAIN\r\nR2 OK Capability completed.\r\n"
        )
        self.assertTrue(take(backend_transport).startswith(b'R3 ID ("x-originating-ip"'))
        backend.dataReceived(b"R3 OK ID completed.\r\n")
        self.assertEqual(take(backend_transport), b'R4 LOGIN "alice" "pw"\r\n')
        events = [
            e for e in self.events if "after its answer to STARTTLS" in e.get("log_format", "")
        ]
        self.assertEqual(len(events), 1)

    def test_required_not_offered(self) -> None:
        """C{required} and no STARTTLS: internal error, and nothing is sent to the backend."""
        _, backend, backend_transport = self.login("required")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] hi\r\n")
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")
        self.assertTrue(backend_transport.disconnecting)
        self.assertTrue(self.client_transport.disconnecting)

    def test_required_refused(self) -> None:
        """C{required} and STARTTLS answered NO: internal error, no credentials sent."""
        _, backend, backend_transport = self.login("required")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        take(backend_transport)
        backend.dataReceived(b"R1 NO not now\r\n")
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")

    def test_handshake_failure(self) -> None:
        """A failed handshake or certificate check: internal error, even when opportunistic."""
        _, backend, backend_transport = self.login("opportunistic")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        backend.dataReceived(b"R1 OK go\r\n")
        take(backend_transport)
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        backend.connectionLost(Failure(error))
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")

    def test_handshake_timeout(self) -> None:
        """A backend that never finishes its handshake is given up after [imap] timeout."""
        _, backend, _ = self.login("required", timeout=7.0)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        backend.dataReceived(b"R1 OK go\r\n")
        self.reactor.advance(7)
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")

    def test_opportunistic_without_starttls_stays_plain(self) -> None:
        """C{opportunistic} and no STARTTLS offered: the login goes on in plaintext."""
        _, backend, backend_transport = self.login("opportunistic", send_id=False)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" "pw"\r\n')
        self.assertIsNone(backend_transport.tls_creator)

    def test_route_overrides_section(self) -> None:
        """A route's own C{backend_tls} wins over C{[imap] backend_tls}."""
        front, transport = self.front("none", backend_ca=self.pki.ca.certificate)
        take(transport)
        self.router.answer = lambda r: Accept((BACKEND,), backend_tls="required")
        front.dataReceived(b"a LOGIN alice pw\r\n")
        backend, backend_transport = self.backend()
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        self.assertEqual(take(backend_transport), b"R1 STARTTLS\r\n")

    def test_none_ignores_starttls(self) -> None:
        """C{none}: a backend's STARTTLS offer is not taken up."""
        _, backend, backend_transport = self.login("none", send_id=False)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" "pw"\r\n')


class POP3BackendTLSTests(TLSFrontTestCase):
    """POP3 STLS to the backend (C{[pop3] backend_tls})."""

    protocol = "pop3"

    def login(self, mode: str) -> tuple[Any, TLSStringTransport]:
        front, transport = self.front("none", backend_tls=mode)
        take(transport)
        self.router.answer = lambda r: Accept((BACKEND,))
        front.dataReceived(b"USER alice\r\nPASS pw\r\n")
        self.assertEqual(take(transport), b"+OK\r\n")
        self.client_transport = transport
        return self.backend()

    def test_required_sends_stls_first(self) -> None:
        """C{required}: STLS right after the greeting; bytes after its +OK are dropped."""
        backend, backend_transport = self.login("required")
        backend.dataReceived(b"+OK [XCLIENT] Dovecot ready.\r\n")
        self.assertEqual(take(backend_transport), b"STLS\r\n")
        backend.dataReceived(b"+OK Begin TLS negotiation now.\r\n+OK injected\r\n")
        self.assertIsNotNone(backend_transport.tls_creator)
        self.assertEqual(take(backend_transport), b"")
        backend.handshakeCompleted()
        self.assertEqual(take(backend_transport), b"XCLIENT ADDR=192.0.2.7 PORT=40000\r\n")
        backend.dataReceived(b"+OK\r\n")
        self.assertEqual(take(backend_transport), b"USER alice\r\n")

    def test_required_refused(self) -> None:
        """C{required} and STLS refused: C{-ERR internal server error}, no USER sent."""
        backend, backend_transport = self.login("required")
        backend.dataReceived(b"+OK ready.\r\n")
        take(backend_transport)
        backend.dataReceived(b"-ERR Unknown command.\r\n")
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"-ERR internal server error\r\n")

    def test_opportunistic_asks_capa(self) -> None:
        """C{opportunistic}: CAPA first; STLS only when listed."""
        backend, backend_transport = self.login("opportunistic")
        backend.dataReceived(b"+OK ready.\r\n")
        self.assertEqual(take(backend_transport), b"CAPA\r\n")
        backend.dataReceived(b"+OK\r\nTOP\r\nUSER\r\n.\r\n")
        self.assertEqual(take(backend_transport), b"USER alice\r\n")
        self.assertIsNone(backend_transport.tls_creator)

    def test_opportunistic_uses_offered_stls(self) -> None:
        """C{opportunistic} with STLS listed: STLS, then the login over TLS."""
        backend, backend_transport = self.login("opportunistic")
        backend.dataReceived(b"+OK ready.\r\n")
        backend.dataReceived(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n")
        self.assertEqual(take(backend_transport), b"CAPA\r\nSTLS\r\n")
        backend.dataReceived(b"+OK\r\n")
        self.assertIsNotNone(backend_transport.tls_creator)
        backend.handshakeCompleted()
        self.assertEqual(take(backend_transport), b"USER alice\r\n")


class ConfigTests(SynchronousTestCase):
    """The C{[imap]}/C{[pop3]} TLS keys and the STARTTLS listeners in the config."""

    def setUp(self) -> None:
        self.pki = make_pki(os.path.abspath(self.mktemp()))

    def parse(self, **sections: Any) -> Config:
        return make_config(tls=tls_section(self.pki), **sections)

    def test_starttls_listeners_accepted(self) -> None:
        """IMAP and POP3 listeners take C{starttls} and C{starttls-required}."""
        config = self.parse(
            listen=[
                {"protocol": "imap", "address": "127.0.0.1:1143", "tls": "starttls"},
                {"protocol": "pop3", "address": "127.0.0.1:1110", "tls": "starttls-required"},
            ]
        )
        self.assertEqual([item.tls for item in config.listen], ["starttls", "starttls-required"])

    def test_service_builds_tls_fronts(self) -> None:
        """The service gives IMAP and POP3 fronts their listener's TLS mode and certificates."""
        config = self.parse(
            listen=[
                {"protocol": "imap", "address": "127.0.0.1:1143", "tls": "starttls"},
                {"protocol": "pop3", "address": "127.0.0.1:1995", "tls": "implicit"},
            ]
        )
        gateway = build_service(config, cast(IGatewayReactor, MemoryReactorClock()))
        imap, pop3 = (
            cast(Any, item.switch.wrapped_factory).wrapped_factory
            for item in gateway.listeners.values()
        )
        assert isinstance(imap, IMAPFrontFactory) and isinstance(pop3, POP3FrontFactory)
        self.assertEqual(imap.settings.tls_mode, "starttls")
        self.assertEqual(pop3.settings.tls_mode, "implicit")
        imap_tls = imap.settings.server_tls
        pop3_tls = pop3.settings.server_tls
        assert imap_tls is not None and pop3_tls is not None
        self.assertEqual((imap_tls.protocol, pop3_tls.protocol), ("imap", "pop3"))
        # SIGHUP re-reads the file and reloads the creators of the listeners it keeps.
        reloaded: list[str] = []
        for server_tls in (imap_tls, pop3_tls):

            def reload(protocol: str = server_tls.protocol) -> bool:
                reloaded.append(protocol)
                return True

            self.patch(server_tls, "reload", reload)
        self.patch(service_module, "load", lambda path: config)
        self.assertTrue(gateway.reload())
        self.assertEqual(reloaded, ["imap", "pop3"])

    def test_backend_tls_keys(self) -> None:
        """backend_tls, backend_ca, backend_certificate and backend_key are read."""
        config = self.parse(
            imap={
                "backend_tls": "required",
                "backend_ca": self.pki.ca.certificate,
                "backend_certificate": self.pki.client.certificate,
                "backend_key": self.pki.client.key,
            },
            pop3={"backend_tls": "implicit", "backend_ca": "system"},
        )
        self.assertEqual(
            (config.imap.backend_tls, config.imap.backend_ca, config.imap.backend_key),
            ("required", self.pki.ca.certificate, self.pki.client.key),
        )
        self.assertEqual((config.pop3.backend_tls, config.pop3.backend_ca), ("implicit", "system"))

    def test_route_backend_tls_for_imap_and_pop3(self) -> None:
        """A C{[[route]]} for IMAP, POP3 or any protocol may set its own C{backend_tls}."""
        config = self.parse(
            route=[
                {
                    "protocol": "imap",
                    "match": "a.org",
                    "backends": ["h:993"],
                    "backend_tls": "implicit",
                },
                {"protocol": "*", "match": "*", "backends": ["h:110"], "backend_tls": "required"},
            ]
        )
        self.assertEqual([r.backend_tls for r in config.routes], ["implicit", "required"])

    def test_backend_key_without_certificate(self) -> None:
        """A backend_key needs a backend_certificate."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(pop3={"backend_key": self.pki.client.key})
        self.assertIn("pop3.backend_key: needs backend_certificate", str(caught.exception))

    def test_backend_ca_must_hold_certificates(self) -> None:
        """A backend_ca that is not a PEM bundle is refused."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(imap={"backend_ca": self.pki.client.key})
        self.assertIn("imap.backend_ca:", str(caught.exception))

    def test_external_needs_client_certificates(self) -> None:
        """EXTERNAL needs [tls] verify_client (and an auth service)."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(imap={"auth": ["plain", "external"]}, auth={"http": "http://x/auth"})
        self.assertIn("imap.auth: 'external' needs [tls] verify_client", str(caught.exception))


# -- against real peers ---------------------------------------------------------------------

_PKIS: dict[type, PKI] = {}


def class_pki(case: TestCase) -> PKI:
    """One test PKI per test class (its Dovecot outlives a test), removed when the run ends."""
    cls = type(case)
    if cls not in _PKIS:
        directory = tempfile.mkdtemp(prefix="relaygate-pki-")
        atexit.register(shutil.rmtree, directory, True)
        _PKIS[cls] = make_pki(directory)
    return _PKIS[cls]


USERS = {"alice@example.org": "secret", "bob@example.org": "hunter2"}
MESSAGE = b"From: a@example.org\r\nSubject: tls\r\n\r\nOver TLS.\r\n"


class DovecotTLSTestCase(TestCase):
    """A Dovecot speaking TLS with C{server_certificate} of the class's test PKI."""

    dovecot_ssl = "yes"

    def server_certificate(self, pki: PKI) -> Issued:
        return pki.server

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        return Deferred.fromCoroutine(self.start_dovecot())

    async def start_dovecot(self) -> None:
        self.pki = class_pki(self)
        issued = self.server_certificate(self.pki)

        def prepare(dovecot: Dovecot) -> None:
            dovecot.deliver("alice@example.org", MESSAGE)
            dovecot.deliver("bob@example.org", MESSAGE)

        self.dovecot = await dovecot_for(
            self,
            USERS,
            prepare,
            ssl=self.dovecot_ssl,
            certificate=issued.certificate,
            key=issued.key,
        )

    async def gateway(
        self,
        protocol: str,
        tls: str = "none",
        backend_port: int = 0,
        router: Router | None = None,
        verify_client: str = "off",
        **section: Any,
    ) -> Gateway:
        """A gateway listener for C{protocol} with TLS mode C{tls}, routed to this Dovecot."""
        from twisted.internet import reactor

        port = backend_port or (
            self.dovecot.imap_port if protocol == "imap" else self.dovecot.pop3_port
        )
        sections: dict[str, Any] = {
            "listen": [{"protocol": protocol, "address": "127.0.0.1:1143", "tls": tls}],
            "tls": tls_section(self.pki, verify_client=verify_client),
            protocol: section,
        }
        auth_url = "http://127.0.0.1:1/auth" if router is not None else ""
        config = config_for(port, auth_url, **sections)
        if router is None:
            router = TableRouter(config.routes)
        factory: Factory
        server_tls = new_server_tls(config.listen[0], config)
        if protocol == "imap":
            factory = IMAPFrontFactory(
                config, config.listen[0], router, reactor, server_tls=server_tls
            )
        else:
            factory = POP3FrontFactory(
                config, config.listen[0], router, reactor, server_tls=server_tls
            )
        implicit = server_tls if tls == "implicit" else None
        return await start_gateway(self, factory, implicit)

    def client_context(self, certificate: Issued | None = None) -> ssl.SSLContext:
        """What a careful client uses: the test CA, host name checks, optionally a certificate."""
        context = ssl.create_default_context(cafile=self.pki.ca.certificate)
        if certificate is not None:
            context.load_cert_chain(certificate.certificate, certificate.key)
        return context

    async def login_line(self, user: str, start: int) -> str:
        """Dovecot's log line for C{user}'s login, logged after index C{start}."""
        return await deferToThread(self.dovecot.wait_for_log, f"Login: user=<{user}>", 30.0, start)

    async def s_client(self, port: int, starttls: str, commands: bytes) -> str:
        """Send C{commands} through C{openssl s_client -starttls}; return what it printed."""
        command = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", starttls,
            "-CAfile", self.pki.ca.certificate, "-verify_hostname", "localhost",
            "-verify_return_error", "-crlf", "-ign_eof",
        ]  # fmt: skip
        result = await deferToThread(
            subprocess.run, command, input=commands, capture_output=True, timeout=60
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        self.assertEqual(result.returncode, 0, output)
        return output


class DovecotIMAPTLSTests(DovecotTLSTestCase):
    """IMAP through the gateway with TLS on either leg, against Dovecot with C{ssl = yes}."""

    async def test_imaplib_starttls(self) -> None:
        """imaplib's C{starttls()}, then LOGIN and FETCH; the router sees the TLS facts."""
        gateway = await self.gateway("imap", "starttls-required")

        def session() -> tuple[Any, ...]:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                before = client.capabilities
                client.starttls(self.client_context())
                after = client.capabilities
                client.login("alice@example.org", "secret")
                client.select("INBOX")
                _, data = client.fetch("1", "(BODY.PEEK[])")
                client.logout()
                fetched = data[0]
                assert isinstance(fetched, tuple)
                return before, after, fetched[1]

        before, after, fetched = await deferToThread(session)
        self.assertIn("LOGINDISABLED", before)
        self.assertNotIn("LOGINDISABLED", after)
        self.assertNotIn("STARTTLS", after)
        self.assertEqual(fetched, MESSAGE)
        await gateway.all_ended()
        [event] = gateway.events
        self.assertTrue(event["tls"].startswith("TLSv1.3 "), event["tls"])
        self.assertEqual(event["backend_tls"], "")

    async def test_imap4_ssl_implicit(self) -> None:
        """C{IMAP4_SSL} against an implicit-TLS listener."""
        gateway = await self.gateway("imap", "implicit")

        def session() -> str:
            with imaplib.IMAP4_SSL(
                "127.0.0.1", gateway.port, ssl_context=self.client_context(), timeout=30
            ) as client:
                client.login("alice@example.org", "secret")
                typ, _ = client.select("INBOX")
                client.logout()
                return str(typ)

        self.assertEqual(await deferToThread(session), "OK")

    async def test_client_certificate_through_starttls(self) -> None:
        """A client certificate over STARTTLS reaches the router, and EXTERNAL logs in."""
        router = ScriptedRouter()
        router.answer = lambda r: Accept(
            (HostPort("127.0.0.1", self.dovecot.imap_port),),
            user=b"bob@example.org",
            password=b"hunter2",
        )
        gateway = await self.gateway(
            "imap", "starttls", router=router, verify_client="optional", auth=["external"]
        )

        def session() -> tuple[Any, ...]:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                client.starttls(self.client_context(self.pki.client))
                caps = client.capabilities
                typ, _ = client.authenticate("EXTERNAL", lambda challenge: b"")
                client.logout()
                return caps, typ

        caps, typ = await deferToThread(session)
        self.assertIn("AUTH=EXTERNAL", caps)
        self.assertEqual(typ, "OK")
        [request] = router.requests
        assert request.tls is not None
        self.assertEqual((request.method, request.tls.verify), ("external", "SUCCESS"))

    async def test_openssl_s_client_starttls_imap(self) -> None:
        """C{openssl s_client -starttls imap} verifies the gateway and gets TLS capabilities."""
        gateway = await self.gateway("imap", "starttls-required")
        output = await self.s_client(gateway.port, "imap", b"a CAPABILITY\nb LOGOUT\n")
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN\r", output)
        self.assertIn("b OK completed", output)

    async def test_backend_required(self) -> None:
        """C{backend_tls = "required"}: Dovecot logs the login as over TLS."""
        gateway = await self.gateway(
            "imap", backend_tls="required", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.imaplib_login(gateway, "alice@example.org", "secret")
        line = await self.login_line("alice@example.org", start)
        self.assertIn(", TLS", line)
        await gateway.all_ended()
        [event] = gateway.events
        self.assertTrue(event["backend_tls"].endswith(" verified"), event["backend_tls"])

    async def test_backend_opportunistic(self) -> None:
        """C{backend_tls = "opportunistic"} takes Dovecot's STARTTLS."""
        gateway = await self.gateway(
            "imap", backend_tls="opportunistic", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.imaplib_login(gateway, "bob@example.org", "hunter2")
        self.assertIn(", TLS", await self.login_line("bob@example.org", start))

    async def test_backend_implicit(self) -> None:
        """C{backend_tls = "implicit"} connects to Dovecot's imaps port with TLS."""
        gateway = await self.gateway(
            "imap",
            backend_port=self.dovecot.imaps_port,
            backend_tls="implicit",
            backend_ca=self.pki.ca.certificate,
        )
        start = len(self.dovecot.log)
        await self.imaplib_login(gateway, "alice@example.org", "secret")
        self.assertIn(", TLS", await self.login_line("alice@example.org", start))

    async def imaplib_login(self, gateway: Gateway, user: str, password: str) -> None:
        def session() -> str:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                typ, _ = client.login(user, password)
                client.logout()
                return str(typ)

        self.assertEqual(await deferToThread(session), "OK")


class DovecotPOP3TLSTests(DovecotTLSTestCase):
    """POP3 through the gateway with TLS on either leg, against Dovecot with C{ssl = yes}."""

    async def test_poplib_stls(self) -> None:
        """poplib's C{stls()}, then USER/PASS and RETR."""
        gateway = await self.gateway("pop3", "starttls-required")

        def session() -> tuple[Any, ...]:
            client = poplib.POP3("127.0.0.1", gateway.port, timeout=30)
            try:
                before = client.capa()
                client.stls(self.client_context())
                after = client.capa()
                client.user("alice@example.org")
                client.pass_("secret")
                _, lines, _ = client.retr(1)
                return before, after, lines
            finally:
                client.quit()

        before, after, lines = await deferToThread(session)
        self.assertEqual(set(before) & {"STLS", "USER"}, {"STLS"})
        self.assertIn("USER", after)
        self.assertNotIn("STLS", after)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", MESSAGE)

    async def test_pop3_ssl_implicit(self) -> None:
        """C{POP3_SSL} against an implicit-TLS listener."""
        gateway = await self.gateway("pop3", "implicit")

        def session() -> bytes:
            client = poplib.POP3_SSL(
                "127.0.0.1", gateway.port, context=self.client_context(), timeout=30
            )
            try:
                client.user("alice@example.org")
                return client.pass_("secret")
            finally:
                client.quit()

        self.assertTrue((await deferToThread(session)).startswith(b"+OK"))

    async def test_openssl_s_client_starttls_pop3(self) -> None:
        """C{openssl s_client -starttls pop3} verifies the gateway; CAPA then lacks STLS."""
        gateway = await self.gateway("pop3", "starttls")
        output = await self.s_client(gateway.port, "pop3", b"CAPA\nQUIT\n")
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("USER\r\nSASL PLAIN LOGIN\r\n.\r", output)

    async def test_backend_required(self) -> None:
        """C{backend_tls = "required"}: STLS to Dovecot, which logs the login as over TLS."""
        gateway = await self.gateway(
            "pop3", backend_tls="required", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.poplib_login(gateway, "alice@example.org", "secret")
        self.assertIn(", TLS", await self.login_line("alice@example.org", start))

    async def test_backend_opportunistic(self) -> None:
        """C{backend_tls = "opportunistic"}: CAPA lists STLS, so it is used."""
        gateway = await self.gateway(
            "pop3", backend_tls="opportunistic", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.poplib_login(gateway, "bob@example.org", "hunter2")
        self.assertIn(", TLS", await self.login_line("bob@example.org", start))

    async def test_backend_implicit(self) -> None:
        """C{backend_tls = "implicit"} connects to Dovecot's pop3s port."""
        gateway = await self.gateway(
            "pop3",
            backend_port=self.dovecot.pop3s_port,
            backend_tls="implicit",
            backend_ca=self.pki.ca.certificate,
        )
        start = len(self.dovecot.log)
        await self.poplib_login(gateway, "alice@example.org", "secret")
        self.assertIn(", TLS", await self.login_line("alice@example.org", start))

    async def poplib_login(self, gateway: Gateway, user: str, password: str) -> None:
        def session() -> bytes:
            client = poplib.POP3("127.0.0.1", gateway.port, timeout=30)
            try:
                client.user(user)
                return client.pass_(password)
            finally:
                client.quit()

        self.assertTrue((await deferToThread(session)).startswith(b"+OK"))


class RefusedBackendTLSMixin:
    """Backend TLS that cannot be set up: the client gets nginx's internal error, Dovecot
    sees no login (its log says the connection ended without an auth attempt)."""

    dovecot: Dovecot
    pki: PKI

    async def refused(self, protocol: str, mode: str) -> None:
        assert isinstance(self, DovecotTLSTestCase)
        gateway = await self.gateway(
            protocol, backend_tls=mode, backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)

        def session() -> list[bytes]:
            client = RawClient(gateway.port)
            try:
                client.line()
                if protocol == "imap":
                    client.send(b"a LOGIN alice@example.org secret\r\n")
                else:
                    client.send(b"USER alice@example.org\r\nPASS secret\r\n")
                    client.line()
                return [client.line(), client.line()]
            finally:
                client.close()

        answer, end = await deferToThread(session)
        if protocol == "imap":
            self.assertEqual(answer, b"* BAD internal server error\r\n")
        else:
            self.assertEqual(answer, b"-ERR internal server error\r\n")
        self.assertEqual(end, b"")
        await gateway.all_ended()
        self.assertEqual(gateway.events[0]["outcome"], "internal error")
        await deferToThread(self.dovecot.wait_for_log, "Disconnected", 30.0, start)
        self.assertEqual([line for line in self.dovecot.log[start:] if "Login:" in line], [])


class DovecotWithoutTLSTests(RefusedBackendTLSMixin, DovecotTLSTestCase):
    """C{backend_tls = "required"} against a Dovecot with C{ssl = no}."""

    dovecot_ssl = "no"

    async def test_imap_required_not_offered(self) -> None:
        """IMAP: no STARTTLS offered, so no login is attempted."""
        await self.refused("imap", "required")

    async def test_pop3_required_not_offered(self) -> None:
        """POP3: STLS refused, so no login is attempted."""
        await self.refused("pop3", "required")


class DovecotWrongNameTests(RefusedBackendTLSMixin, DovecotTLSTestCase):
    """A backend whose certificate is not for its address is refused, even opportunistically."""

    def server_certificate(self, pki: PKI) -> Issued:
        return pki.wrong_name

    async def test_imap_wrong_name(self) -> None:
        """IMAP STARTTLS to a wrong-name certificate fails the login."""
        await self.refused("imap", "opportunistic")

    async def test_pop3_wrong_name(self) -> None:
        """POP3 STLS to a wrong-name certificate fails the login."""
        await self.refused("pop3", "required")
