"""A protocol that stands between a transport and the protocol it serves, invisibly.

The PROXY reader and the connection limits both decide, before the front exists, whether a
connection may reach it; after that they only pass things through. Twisted's
L{twisted.protocols.policies.ProtocolWrapper} does the passing through, but copies the
transport's interfaces once, at connection time, so after STARTTLS the wrapper would not
provide L{ISSLTransport} and C{relaygate.tls.client_tls_info} would see no TLS; and it is not
L{IHalfCloseableProtocol}, so a client's half-close would become a full close for the IMAP and
POP3 splice, nor L{IHandshakeListener}, so a front would never learn that its implicit-TLS
handshake is done. L{TransportWrapper} fixes these, and builds the wrapped protocol only when the
subclass says the connection may go on (L{connect_wrapped}).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer, providedBy

from relaygate.provides import provide_like
from relaygate.tls.transport import SECURED_TCP, start_tls_over_tcp
from relaygate.write_now import write_soon


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class TransportWrapper(Protocol):
    """The wrapped protocol's transport: every call goes to the real transport below.

    Subclasses override C{getPeer}/C{getHost} or hold data back, and call L{connect_wrapped}
    once the connection may reach the protocol they wrap.
    """

    wrapped: IProtocol | None = None
    disconnecting = False
    _handshake_done = False
    _peer: IAddress | None = None

    @override
    def makeConnection(self, transport: Any) -> None:
        provide_like(self, providedBy(transport))
        super().makeConnection(transport)

    def connect_wrapped(self, wrapped: IProtocol, data: bytes = b"") -> None:
        """Connect C{wrapped} with this wrapper as its transport, then give it C{data}."""
        self.wrapped = wrapped
        transport: Any = self
        wrapped.makeConnection(transport)
        if self._handshake_done and IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()
        if data and self.wrapped is not None:
            self.wrapped.dataReceived(data)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        wrapped, self.wrapped = self.wrapped, None
        if wrapped is not None:
            wrapped.connectionLost(reason)

    def readConnectionLost(self) -> None:
        """The peer half-closed: the wrapped protocol decides, as it would on TCP."""
        half = IHalfCloseableProtocol(self.wrapped, None)
        if half is not None:
            half.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our side of the connection was half-closed."""
        half = IHalfCloseableProtocol(self.wrapped, None)
        if half is not None:
            half.writeConnectionLost()

    def handshakeCompleted(self) -> None:
        """The TLS layer below (implicit TLS or STARTTLS) is ready: tell the wrapped protocol,
        now or as soon as it is connected."""
        self._handshake_done = True
        if self.wrapped is not None and IHandshakeListener.providedBy(self.wrapped):
            self.wrapped.handshakeCompleted()

    # The transport side.

    def getPeer(self) -> IAddress:
        """The peer's address: the real transport's, asked once (TCP builds one per call)."""
        peer = self._peer
        if peer is None:
            assert self.transport is not None
            peer = self._peer = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        """Our address (the real transport's)."""
        assert self.transport is not None
        return self.transport.getHost()

    def write(self, data: bytes) -> None:
        """Send C{data} (at the end of the reactor's turn, when the transport below is TCP)."""
        assert self.transport is not None
        write_soon(self.transport, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Send C{data}."""
        assert self.transport is not None
        self.transport.writeSequence(data)

    def loseConnection(self) -> None:
        """Close after what is written has been sent."""
        self.disconnecting = True
        assert self.transport is not None
        self.transport.loseConnection()

    def startTLS(self, creator: Any, normal: bool = True) -> None:
        """Start TLS on the real transport, and from now on provide what it provides.

        Directly over a TCP connection, a server's TLS goes in between (L{start_tls_over_tcp}:
        Twisted's C{startTLS} minus its per-connection declaration work), and the wrapper
        provides what the connection would after Twisted's C{startTLS}.
        """
        transport: Any = self.transport
        if normal and type(transport) is tcp.Server:
            # A wrapper on a server connection: the TLS server side, as startTLS would pick.
            self.transport = start_tls_over_tcp(transport, self, creator)
            provide_like(self, SECURED_TCP)
            return
        transport.startTLS(creator, normal)
        provide_like(self, providedBy(transport))

    def __getattr__(self, name: str) -> Any:
        # Everything else (producer methods, abortConnection, getHandle after STARTTLS ...)
        # is the real transport's. Never forward dunder names or before a transport exists.
        transport = self.__dict__.get("transport")
        if transport is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(transport, name)


class FactoryWrapper(Factory):
    """A listener's factory in front of the front's own: it starts and stops with it.

    Subclasses build a L{TransportWrapper} per connection, which builds the wrapped factory's
    protocol once the connection may go on.
    """

    noisy = False

    def __init__(self, wrapped_factory: IProtocolFactory) -> None:
        self.wrapped_factory = wrapped_factory

    @override
    def doStart(self) -> None:
        self.wrapped_factory.doStart()

    @override
    def doStop(self) -> None:
        self.wrapped_factory.doStop()
