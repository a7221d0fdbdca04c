"""The operations wrapper: every front connection joins the sessions registry through it.

L{OpsFactory} sits directly around a front's factory (inside TLS and the limits), so the front's
transport is an L{OpsConnection}. The wrapper registers the session (client, listener,
protocol), counts its bytes both ways (an integer addition per read or write), counts sessions
and client TLS handshakes in the metrics, and carries the session's close and drain hooks. A
front adds what only it knows — user, backend, state, and protocol-aware drain — through
C{ops_facts()} (asked when the sessions view is read), C{ops_close(reason)} and
C{ops_drain()}.

Without a front's own C{ops_close}, a close writes the protocol's own goodbye
(C{421 4.7.0}/C{421 4.3.2}, C{* BYE}, C{-ERR}) and closes. Without C{ops_drain}, draining
leaves the session alone until the drain's deadline.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.python.failure import Failure
from typing_extensions import override

from relaygate.ops.build import Operations
from relaygate.ops.sessions import KICK, LiveSession
from relaygate.wrapping import FactoryWrapper, TransportWrapper

_GOODBYES = {
    ("smtp", KICK): b"421 4.7.0 %(name)s Session closed by the administrator\r\n",
    ("smtp", "shutdown"): b"421 4.3.2 %(name)s Service shutting down\r\n",
    ("imap", KICK): b"* BYE Session closed by the administrator\r\n",
    ("imap", "shutdown"): b"* BYE Service shutting down\r\n",
    ("pop3", KICK): b"-ERR Session closed by the administrator\r\n",
    ("pop3", "shutdown"): b"-ERR Service shutting down\r\n",
}


def goodbye(protocol: str, reason: str, server_name: str) -> bytes:
    """What C{protocol} tells a client closed for C{reason} (L{KICK} or C{"shutdown"})."""
    return _GOODBYES[protocol, reason] % {b"name": server_name.encode("idna")}


def session_for(transport: object) -> LiveSession | None:
    """The live session of the connection whose front has C{transport} (None without ops)."""
    found = getattr(transport, "ops_session", None)
    return found if isinstance(found, LiveSession) else None


class OpsConnection(TransportWrapper):
    """One front connection as the operations side sees it."""

    ops_session: LiveSession | None = None

    def __init__(self, factory: OpsFactory, addr: IAddress | None) -> None:
        self._factory = factory
        self._addr = addr
        self._tls_started = factory.implicit_tls
        self._tls_done = False

    @override
    def connectionMade(self) -> None:
        factory = self._factory
        ops = factory.ops
        if ops.draining:
            # Accepted just before the listener closed: the process is going away.
            assert self.transport is not None
            self.transport.write(goodbye(factory.protocol_name, "shutdown", factory.server_name))
            self.transport.loseConnection()
            return
        self.ops_session = ops.sessions.open(
            factory.protocol_name,
            _describe(self.getPeer()),
            factory.listener,
            self,
            ops.generation,
        )
        ops.metrics.session_started(factory.protocol_name)
        wrapped = factory.wrapped_factory.buildProtocol(self.getPeer())
        if wrapped is None:
            self.loseConnection()
            return
        self.connect_wrapped(wrapped)

    @override
    def dataReceived(self, data: bytes) -> None:
        session = self.ops_session
        if session is not None:
            session.bytes_in += len(data)
            if session.state == "greeting":
                session.state = "command"
        super().dataReceived(data)

    @override
    def write(self, data: bytes) -> None:
        if self.ops_session is not None:
            self.ops_session.bytes_out += len(data)
        super().write(data)

    @override
    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    @override
    def startTLS(self, creator: Any, normal: bool = True) -> None:
        self._tls_started = True
        super().startTLS(creator, normal)

    @override
    def handshakeCompleted(self) -> None:
        if not self._tls_done:
            self._tls_done = True
            self._factory.ops.metrics.tls_handshake("ok")
        super().handshakeCompleted()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        session, self.ops_session = self.ops_session, None
        if session is not None:
            metrics = self._factory.ops.metrics
            if self._tls_started and not self._tls_done:
                metrics.tls_handshake("failed")
            metrics.session_ended(self._factory.protocol_name)
            session.end()
        super().connectionLost(reason)

    # SessionHooks

    def close(self, reason: str) -> None:
        """Close with the front's own words when it has them, else the protocol's goodbye."""
        hook = getattr(self.wrapped, "ops_close", None)
        if hook is not None:
            hook(reason)
            return
        if self.transport is None or self.disconnecting:
            return
        self.write(goodbye(self._factory.protocol_name, reason, self._factory.server_name))
        self.loseConnection()

    def facts(self) -> dict[str, str]:
        """The front's own view of user, backend and state (C{ops_facts}), when it has one."""
        hook = getattr(self.wrapped, "ops_facts", None)
        facts: dict[str, str] = hook() if hook is not None else {}
        return facts

    def drain(self) -> None:
        """Let the front finish what is in progress (a front without the hook runs on)."""
        hook = getattr(self.wrapped, "ops_drain", None)
        if hook is not None:
            hook()


class OpsFactory(FactoryWrapper):
    """Wraps one listener's front factory with the operations side of its generation."""

    def __init__(
        self,
        wrapped_factory: IProtocolFactory,
        ops: Operations,
        protocol: str,
        listener: str,
        server_name: str,
        implicit_tls: bool = False,
    ) -> None:
        super().__init__(wrapped_factory)
        self.ops = ops
        self.protocol_name = protocol
        self.listener = listener
        self.server_name = server_name
        self.implicit_tls = implicit_tls

    @override
    def buildProtocol(self, addr: IAddress | None) -> OpsConnection:
        return OpsConnection(self, addr)

    def __getattr__(self, name: str) -> Any:
        # Code that looks at a listener's factory (tests, tools) still finds the front's.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["wrapped_factory"], name)


def _describe(address: object) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
