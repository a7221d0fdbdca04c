"""TLS between clients and the IMAP/POP3 fronts (L{relaygate.client_tls} as the login front
uses it): STARTTLS/STLS, implicit TLS, client certificates; in memory."""

from __future__ import annotations

import base64
from typing import Any

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient
from typing_extensions import override
from zope.interface import implementer

from relaygate.imap import IMAPFrontFactory
from relaygate.listeners import new_server_tls
from relaygate.login.front import LoginFront
from relaygate.pop3 import POP3FrontFactory
from relaygate.routing.router import Accept, AuthRequest
from relaygate.tls.client import trust_root
from relaygate.tls.server import ServerTLS
from tests.certs import PKI, Issued, issue
from tests.fronts import (
    gateway,
    take,
)
from tests.tls_fronts import (
    BACKEND,
    IMAP_CAPS,
    TLSFrontTestCase,
    listen,
)


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
                config, listener, self.router, gateway(self.reactor), server_tls=server_tls
            )
        else:
            front_factory = IMAPFrontFactory(
                config, listener, self.router, gateway(self.reactor), server_tls=server_tls
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
