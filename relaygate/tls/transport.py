"""The TLS layer of implicit-TLS listeners: Twisted's, with its interface declaration made once.

L{TLSMemoryBIOProtocol.makeConnection} (Twisted 26.10) copies its transport's interfaces with
one C{directlyProvides} call per interface; each call replaces the previous declaration, so the
TLS layer ends up declaring only the last one, and each builds a new C{Provides} object on the
way. Measured on the TLS bench (docs/performance.md, "TLS handshakes and AUTH logins") that loop
was about 50 us of every handshake (ten calls over a TCP transport). L{ServerTLSProtocol} does
the same loop once per transport specification (L{relaygate.provides.provide_like}) and hands
later connections the very declaration it produced, so what the layer provides is exactly what
Twisted's own code gives it. Everything else is Twisted's C{BufferingTLSTransport}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from typing_extensions import override
from zope.interface import directlyProvides, implementer, providedBy
from zope.interface.declarations import Declaration

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
