"""Tests for L{relaygate.tls.transport}: the implicit-TLS layer and its endpoint."""

from __future__ import annotations

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    ISSLTransport,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from zope.interface import alsoProvides, providedBy

from relaygate.tls.server import ServerTLS
from relaygate.tls.state import tls_connection
from relaygate.tls.transport import ServerTLSEndpoint, ServerTLSFactory, ServerTLSProtocol
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
