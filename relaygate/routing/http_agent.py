"""The L{IAgent} under the auth lookup's treq client: keep-alive HTTP/1.1, nothing more.

treq stays the client API; this replaces what it runs on, Twisted's C{Agent} and
C{HTTPConnectionPool}, for the few fixed auth URLs. Those build a C{Request}, a
C{HTTP11ClientProtocol} state machine, a parser and several L{Deferred}s per request, and were
the largest part of the lookup's cost (docs/performance.md, "The auth lookup: a lean agent under
treq"). L{LeanAgent} writes the request from the caller's L{Headers} in one write and parses the
answer with L{relaygate.routing.http_wire}.

What it keeps of Twisted's pool: idle connections per (scheme, host, port), reused newest
first, at most C{max_idle} of them per key; a connection the server closed, or that answered
C{Connection: close} or HTTP/1.0, is not reused; a request that fails on a reused connection
before one byte of answer came back is sent once more on a new connection (the server closed
it while idle), as Twisted does for idempotent requests. What it adds: a connection idle for
longer than C{idle_timeout} is closed when next picked instead of being used. What it
refuses: request bodies (auth_http has none).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Final

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from relaygate.routing.http_wire import HTTPConnection, WireResponse

MAX_IDLE_CONNECTIONS: Final = 128
# Servers commonly drop idle keep-alive connections after a minute or a few; one idle longer
# than this is more likely to be half-closed than useful.
IDLE_TIMEOUT: Final = 240.0
_IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS"))
_METHOD: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_MAX_ROUTES: Final = 64

_Key = tuple[bytes, bytes, int]


class _Route:
    """What a request to one URL needs, computed once per URL."""

    __slots__ = ("endpoint", "host", "key", "target")

    def __init__(self, uri: URI, endpoint: IStreamClientEndpoint) -> None:
        self.key: _Key = (uri.scheme, uri.host, uri.port)
        self.endpoint = endpoint
        self.target = uri.originForm
        default_port = 443 if uri.scheme == b"https" else 80
        self.host = uri.host if uri.port == default_port else b"%s:%d" % (uri.host, uri.port)


@implementer(IAgent)
class LeanAgent:
    """An L{IAgent} with a keep-alive pool, for GET requests without a body."""

    def __init__(
        self,
        clock: IReactorTime,
        endpoints: IAgentEndpointFactory,
        max_idle: int = MAX_IDLE_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._endpoints = endpoints
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: dict[_Key, list[HTTPConnection]] = {}
        self._routes: dict[bytes, _Route] = {}
        self._closing: dict[HTTPConnection, Deferred[None]] = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,  # noqa: N803 (IAgent's name)
    ) -> Deferred[IResponse]:
        """Send C{method} C{uri} with C{headers}; fire with the answer once its head is read."""
        if bodyProducer is not None:
            return fail(ValueError("request bodies are not supported"))
        if _METHOD.fullmatch(method) is None:
            return fail(ValueError(f"invalid method {method!r}"))
        route = self._routes.get(uri)
        if route is None:
            try:
                route = self._route(uri)
            except Exception:
                return fail()
        parts = [method, b" ", route.target, b" HTTP/1.1\r\n"]
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                for value in values:
                    parts += (name, b": ", value, b"\r\n")
        if headers is None or not headers.hasHeader(b"host"):
            parts += (b"Host: ", route.host, b"\r\n")
        parts.append(b"\r\n")
        exchange = _Exchange(self, route, b"".join(parts), method in _IDEMPOTENT)
        result = exchange.result
        exchange.start()
        return result

    def _route(self, uri: bytes) -> _Route:
        parsed = URI.fromBytes(uri)
        if parsed.scheme not in (b"http", b"https"):
            raise ValueError(f"unsupported scheme in {uri!r}")
        if any(byte <= 0x20 or byte == 0x7F for byte in parsed.originForm):
            raise ValueError(f"invalid URI {uri!r}")
        route = _Route(parsed, self._endpoints.endpointForURI(parsed))
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        self._routes[uri] = route
        return route

    def take_idle(self, key: _Key) -> HTTPConnection | None:
        """The newest idle connection to C{key}, closing those idle for too long."""
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_allowed = self._clock.seconds() - self._idle_timeout
        # Oldest first in the list: the expired ones are a prefix of it.
        expired = 0
        while expired < len(idle) and idle[expired].idle_since < oldest_allowed:
            expired += 1
        if expired:
            stale = idle[:expired]
            del idle[:expired]
            for connection in stale:
                connection.close()
        while idle:
            connection = idle.pop()
            # One dropped while idle (bytes nobody asked for) until its loss is reported.
            if connection.usable:
                return connection
        return None

    def connected(self, key: _Key, connection: HTTPConnection) -> None:
        """A new connection to C{key}: forget it from the pool when it is lost."""
        connection.on_lost = partial(self._forget, key)

    def release(self, key: _Key, connection: HTTPConnection) -> None:
        """C{connection} finished an answer and may serve again: keep it, or close it."""
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = self._clock.seconds()
        idle.append(connection)

    def _forget(self, key: _Key, connection: HTTPConnection) -> None:
        idle = self._idle.get(key)
        if idle is not None and connection in idle:
            idle.remove(connection)
        waiting = self._closing.pop(connection, None)
        if waiting is not None:
            waiting.callback(None)

    def close_cached_connections(self) -> Deferred[None]:
        """Close every idle connection; fire when all of them are closed."""
        closing: list[Deferred[None]] = []
        for idle in self._idle.values():
            for connection in idle:
                if not connection.lost:
                    waiting: Deferred[None] = Deferred()
                    self._closing[connection] = waiting
                    closing.append(waiting)
                    connection.close()
        self._idle.clear()
        done: Deferred[None] = gatherResults(closing).addCallback(lambda _: None)
        return done


class _Exchange:
    """One request: on an idle connection or a new one, retried once if a reused one was stale."""

    __slots__ = (
        "_agent",
        "_answered",
        "_cancelled",
        "_connecting",
        "_connection",
        "_data",
        "_result",
        "_retry",
        "_reused",
        "_route",
    )

    def __init__(self, agent: LeanAgent, route: _Route, data: bytes, retry: bool) -> None:
        self._agent = agent
        self._route = route
        self._data = data
        self._retry = retry
        self._connection: HTTPConnection | None = None
        self._connecting: Deferred[HTTPConnection] | None = None
        self._reused = False
        self._answered = False
        self._cancelled = False
        self._result: Deferred[IResponse] | None = Deferred(self._cancel)

    @property
    def result(self) -> Deferred[IResponse]:
        """The answer's Deferred; ask for it before L{start}."""
        assert self._result is not None
        return self._result

    def _fire(self, outcome: IResponse | Failure) -> None:
        """Fire the result once, and let go of it: its canceller refers back to this exchange,
        and a cycle would leave both to the garbage collector, once per request."""
        result, self._result = self._result, None
        if result is None:
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def start(self) -> None:
        """Send on an idle connection if there is one, else on a new one."""
        connection = self._agent.take_idle(self._route.key)
        if connection is None:
            self._connect()
        else:
            self._reused = True
            self._connection = connection
            connection.send(self._data, self)

    def _connect(self) -> None:
        self._reused = False
        connecting = connectProtocol(self._route.endpoint, HTTPConnection())
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._not_connected)

    def _connected(self, connection: HTTPConnection) -> None:
        self._connecting = None
        self._agent.connected(self._route.key, connection)
        self._connection = connection
        connection.send(self._data, self)

    def _not_connected(self, reason: Failure) -> None:
        self._connecting = None
        if not self._cancelled:
            self._fire(reason)

    def _cancel(self, _: Deferred[IResponse]) -> None:
        # Deferred.cancel fails the result itself once this returns.
        self._cancelled = True
        self._result = None
        if self._connecting is not None:
            self._connecting.cancel()
        elif self._connection is not None and not self._answered:
            self._connection.abandon()

    def response_received(self, response: WireResponse) -> None:
        """The head came: the caller gets the response and reads its body."""
        self._answered = True
        self._fire(response)

    def request_failed(self, reason: Failure, nothing_received: bool) -> None:
        """No answer: retry once if a reused connection was closed under us, else fail."""
        self._connection = None
        if self._cancelled or self._result is None:
            return
        if self._reused and nothing_received and self._retry:
            self._connect()
            return
        self._fire(reason)

    def connection_done(self, connection: HTTPConnection, reusable: bool) -> None:
        """The answer ended; a reusable connection goes back to the pool."""
        self._connection = None
        if reusable:
            self._agent.release(self._route.key, connection)
