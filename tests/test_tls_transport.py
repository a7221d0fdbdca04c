"""Tests for L{relaygate.tls.transport}: the implicit-TLS layer and its endpoint."""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import TestCase
from typing_extensions import override
from zope.interface import alsoProvides, directlyProvides, implementer, providedBy
from zope.interface.declarations import Provides

from relaygate.config.tls import TLSConfig
from relaygate.tls.server import ServerTLS
from relaygate.tls.state import tls_connection
from relaygate.tls.transport import ServerTLSEndpoint, ServerTLSFactory, ServerTLSProtocol
from relaygate.wrapping import TransportWrapper
from tests.certs import make_pki
from tests.tls_harness import Loopback, Peer, PKITestCase, TestClient


def _tcp_like() -> StringTransport:
    """A memory transport declaring what a TCP connection declares."""
    transport = StringTransport()
    alsoProvides(transport, ITCPTransport, ITLSTransport, IHalfCloseableDescriptor)
    return transport


def _connected(factory: TLSMemoryBIOFactory, transport: StringTransport) -> BufferingTLSTransport:
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, BufferingTLSTransport)
    protocol.makeConnection(transport)
    return protocol


class ServerTLSProtocolTests(PKITestCase):
    """L{ServerTLSProtocol} leaves the state Twisted's own TLS layer leaves, cheaper."""

    def _factories(self) -> tuple[TLSMemoryBIOFactory, ServerTLSFactory]:
        creator = ServerTLS(self.file_config(), "smtp")
        wrapped = Factory.forProtocol(Protocol)
        clock = Clock()
        return (
            TLSMemoryBIOFactory(creator, False, wrapped, clock=clock),
            ServerTLSFactory(creator, False, wrapped, clock=clock),
        )

    def test_same_state_as_twisted_layer(self) -> None:
        """After makeConnection: the same interfaces, attributes and bytes as Twisted's layer."""
        stock_factory, factory = self._factories()
        stock_transport, transport = _tcp_like(), _tcp_like()
        stock = _connected(stock_factory, stock_transport)
        ours = _connected(factory, transport)
        self.assertIsInstance(ours, ServerTLSProtocol)
        self.assertEqual(list(providedBy(ours)), list(providedBy(stock)))
        self.assertEqual(sorted(vars(ours)), sorted(vars(stock)))
        self.assertEqual(transport.value(), stock_transport.value())
        self.assertTrue(ISSLTransport.providedBy(ours))
        self.assertEqual(list(factory.protocols), [ours])

    def test_declaration_shared_by_connections(self) -> None:
        """The second connection reuses the first one's declaration object."""
        _, factory = self._factories()
        first = _connected(factory, _tcp_like())
        second = _connected(factory, _tcp_like())
        self.assertIs(second.__provides__, first.__provides__)  # type: ignore[attr-defined]

    def test_handshake_and_data_over_loopback(self) -> None:
        """A client completes the handshake; the wrapped protocol sees a TLS transport."""
        server, client = Peer(), Peer()
        clock = Clock()
        server_factory = ServerTLSFactory(
            ServerTLS(self.file_config(), "smtp"),
            False,
            Factory.forProtocol(lambda: server),
            clock=clock,
        )
        client_factory = TLSMemoryBIOFactory(
            TestClient(), True, Factory.forProtocol(lambda: client), clock=clock
        )
        client_tls, server_tls, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
        )
        link = Loopback(server, client, server_tls, client_tls, pump)  # type: ignore[arg-type]
        pump.flush()
        self.assertTrue(link.server.handshake_done)
        self.assertTrue(link.client.handshake_done)
        assert server.transport is not None
        self.assertTrue(ISSLTransport.providedBy(server.transport))
        self.assertIsNotNone(tls_connection(server.transport))
        server.transport.write(b"220 ready\r\n")
        clock.advance(0)
        pump.flush()
        self.assertEqual(client.received, b"220 ready\r\n")
        assert client.transport is not None
        client.transport.write(b"EHLO x\r\n")
        clock.advance(0)
        pump.flush()
        self.assertEqual(server.received, b"EHLO x\r\n")


class ServerTLSEndpointTests(PKITestCase):
    """L{ServerTLSEndpoint} listens with a L{ServerTLSFactory} around the given factory."""

    def test_listen_wraps_factory(self) -> None:
        """The listening factory is a L{ServerTLSFactory} for a server, with the given clock."""
        reactor = MemoryReactorClock()
        creator = ServerTLS(self.file_config(), "smtp")
        wrapped = Factory.forProtocol(Protocol)
        endpoint = ServerTLSEndpoint(
            creator, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), reactor
        )
        self.successResultOf(endpoint.listen(wrapped))
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        assert isinstance(factory, ServerTLSFactory)
        self.assertIs(factory.wrappedFactory, wrapped)
        self.assertIs(factory._clock, reactor)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, ServerTLSProtocol)


@implementer(IPushProducer)
class _Producer:
    """A producer registered on the connection before STARTTLS, as the fronts register one."""

    def pauseProducing(self) -> None:
        """Not used."""

    def resumeProducing(self) -> None:
        """Not used."""

    def stopProducing(self) -> None:
        """Not used."""


class _Inner(Peer):
    """The protocol above the wrapper; C{got_data} fires at its first bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.got_data: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if not self.got_data.called:
            self.got_data.callback(None)


class _StartTLSServer(TransportWrapper):
    """A wrapper whose inner protocol upgrades on C{STARTTLS}, as a front does."""

    def __init__(self, creator: ServerTLS, inner: _Inner, upgraded: Deferred[None]) -> None:
        self._creator = creator
        self._inner = inner
        self._upgraded = upgraded
        self.producer = _Producer()
        self.connection: tcp.Server | None = None

    @override
    def connectionMade(self) -> None:
        assert isinstance(self.transport, tcp.Server)
        self.connection = self.transport
        self.transport.registerProducer(self.producer, True)
        self.connect_wrapped(self._inner)

    @override
    def dataReceived(self, data: bytes) -> None:
        if data == b"STARTTLS\r\n" and not ISSLTransport.providedBy(self):
            self.write(b"220 go ahead\r\n")
            self.startTLS(self._creator)
            self._upgraded.callback(None)
            return
        super().dataReceived(data)


class _StartTLSClient(Peer):
    """Sends STARTTLS, starts TLS at the 220, then waits for the server's first TLS bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.secured: Deferred[None] = Deferred()
        self.got_data: Deferred[None] = Deferred()

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"STARTTLS\r\n")

    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if data == b"220 go ahead\r\n":
            self.transport.startTLS(TestClient())  # type: ignore[attr-defined]
            self.transport.write(b"EHLO over tls\r\n")
            return
        super().dataReceived(data)
        self.got_data.callback(None)

    @override
    def handshakeCompleted(self) -> None:
        super().handshakeCompleted()
        self.secured.callback(None)


class StartTLSOverTCPTests(TestCase):
    """STARTTLS on a real TCP connection puts L{ServerTLSProtocol} under the wrapper."""

    async def test_upgrade_over_a_real_connection(self) -> None:
        """Layer placement, interfaces, the moved producer and data both ways over TLS."""
        from twisted.internet import reactor

        pki = make_pki(os.path.abspath(self.mktemp()))
        creator = ServerTLS(
            TLSConfig(certificate=pki.server.certificate, key=pki.server.key), "smtp"
        )
        inner = _Inner()
        upgraded: Deferred[None] = Deferred()
        server = _StartTLSServer(creator, inner, upgraded)
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await endpoint.listen(Factory.forProtocol(lambda: server))
        self.addCleanup(port.stopListening)
        client = _StartTLSClient()
        address = port.getHost()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", address.port), client)
        await upgraded

        connection = server.connection
        assert connection is not None
        layer = server.transport
        self.assertIsInstance(layer, ServerTLSProtocol)
        self.assertIs(connection.protocol, layer)
        self.assertFalse(connection.TLS)
        # What the wrapper provided after Twisted's own startTLS on the connection.
        reference = _StartTLSServer.__new__(_StartTLSServer)
        directlyProvides(reference, Provides(tcp.Server, ISSLTransport))
        self.assertEqual(list(providedBy(server)), list(providedBy(reference)))
        self.assertEqual(list(providedBy(server))[:2], [ISSLTransport, ITLSTransport])
        self.assertIs(layer._producer._producer, server.producer)  # type: ignore[union-attr]
        self.assertIsNot(connection.producer, server.producer)

        await client.secured
        await inner.got_data
        self.assertEqual(inner.received, b"EHLO over tls\r\n")
        self.assertIsInstance(tls_connection(server), SSL.Connection)
        server.write(b"250 secret\r\n")
        await client.got_data
        self.assertEqual(client.received, b"250 secret\r\n")

        lost: Deferred[None] = Deferred()
        client_lost: Deferred[None] = Deferred()
        inner.on_lost, client.on_lost = lost, client_lost
        server.unregisterProducer()
        server.loseConnection()
        await lost
        await client_lost
        assert inner.lost is not None
        self.assertTrue(inner.lost.check(ConnectionDone))
