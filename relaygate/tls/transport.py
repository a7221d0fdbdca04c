"""The front door's TLS layer: Twisted's, with its interface declaration made once.

L{TLSMemoryBIOProtocol.makeConnection} (Twisted 26.10) copies its transport's interfaces with
one C{directlyProvides} call per interface; each call replaces the previous declaration, so the
TLS layer ends up declaring only the last one, and each builds a new C{Provides} object on the
way. Measured on the TLS bench (docs/performance.md, "TLS handshakes and AUTH logins") that loop
was about 50 us of every handshake (ten calls over a TCP transport). L{ServerTLSProtocol} does
the same loop once per transport specification (L{relaygate.provides.provide_like}) and hands
later connections the very declaration it produced, so what the layer provides is exactly what
Twisted's own code gives it. Everything else is Twisted's C{BufferingTLSTransport}.

Implicit-TLS listeners get it through L{ServerTLSEndpoint}; STARTTLS through
L{start_tls_over_tcp}, which puts it above the TCP transport the way an implicit-TLS listener
has it, instead of Twisted's C{transport.startTLS}, which builds the stock layer (and its
declaration loop) on every upgrade.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from typing_extensions import override
from zope.interface import directlyProvides, implementer, providedBy
from zope.interface.declarations import Declaration, Provides

from relaygate.provides import provide_like


def declare_each(target: Any, spec: Declaration) -> None:
    """Declare C{spec}'s interfaces on C{target} the way C{TLSMemoryBIOProtocol} does: one
    C{directlyProvides} call per interface, each replacing the one before."""
    for interface in spec:
        directlyProvides(target, interface)


class ServerTLSProtocol(BufferingTLSTransport):
    """Twisted's TLS layer whose C{makeConnection} declares interfaces once per transport kind."""

    @override
    def makeConnection(self, transport: Any) -> None:
        # TLSMemoryBIOProtocol.makeConnection (Twisted 26.10) step for step; only the
        # declaration loop goes through provide_like. tests/test_tls_transport.py compares
        # the state it leaves with Twisted's own, so a Twisted change shows there.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        provide_like(self, providedBy(transport), declare_each)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()


class ServerTLSFactory(TLSMemoryBIOFactory):
    """L{TLSMemoryBIOFactory} building L{ServerTLSProtocol}s."""

    protocol = ServerTLSProtocol


@implementer(IStreamServerEndpoint)
class ServerTLSEndpoint:
    """C{endpoints.wrapServerTLS} with L{ServerTLSFactory}: TLS from the first byte."""

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
    ) -> None:
        """@param clock: schedules the TLS layer's buffered writes, as in C{wrapServerTLS}."""
        self._creator = creator
        self._endpoint = endpoint
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        """Listen on the wrapped endpoint, with TLS around C{protocolFactory}'s protocols."""
        factory = ServerTLSFactory(self._creator, False, protocolFactory, clock=self._clock)
        return self._endpoint.listen(factory)


def start_tls_over_tcp(
    connection: tcp.Server, protocol: Any, creator: IOpenSSLServerConnectionCreator
) -> ServerTLSProtocol:
    """Start server-side TLS on C{connection} below C{protocol} (its protocol): STARTTLS.

    What C{connection.startTLS(creator)} (C{twisted.internet._newtls.startTLS}) does, with the
    layer where an implicit-TLS listener has it: C{connection} keeps sending and receiving raw
    bytes, the returned layer becomes C{protocol}'s transport. A producer registered on
    C{connection} moves to the layer, as Twisted moves it. Bytes C{connection} reads from now
    on go to the layer; what came before was already handed to C{protocol} in plaintext (the
    fronts drop what a client pipelined after STARTTLS).

    C{connection} itself stays as an implicit-TLS listener has it (no L{ISSLTransport}, its
    own C{getHandle}); the caller gives its wrapper L{SECURED_TCP}, so code above sees the
    interfaces it saw after Twisted's C{startTLS}.
    """
    # The clock (None: the global reactor's, for the layer's buffered writes) and the missing
    # wrapped factory are what Twisted's startTLS gives its layer.
    factory = ServerTLSFactory(creator, False, None, clock=None)  # type: ignore[arg-type]
    layer = ServerTLSProtocol(factory, protocol, _connectWrapped=False)
    producer, streaming = connection.producer, connection.streamingProducer
    if producer is not None:
        connection.unregisterProducer()
    connection.protocol = layer
    layer.makeConnection(connection)
    if producer is not None:
        layer.registerProducer(producer, streaming)
    return layer


SECURED_TCP: Final[Declaration] = Provides(tcp.Server, ISSLTransport)
"""What a TCP server connection provides after Twisted's C{startTLS}, which declares
L{ISSLTransport} on it: the declaration a wrapper copies after L{start_tls_over_tcp}."""
