"""Per client address limits (C{[limits]}): concurrent connections, new connections per minute,
failed logins per hour.

A client over a limit is told so in its protocol's words (SMTP C{421 4.7.0}, IMAP C{* BYE},
POP3 C{-ERR}) and closed before the front is built. The counts live behind L{LimitStore}, a
small asynchronous interface: L{MemoryLimitStore} counts in this process (so with several
workers or instances each counts its own clients); a store backed by Redis can implement the
same methods to share counts between instances (DESIGN.md, "Where it grows").

The address counted is the real client's: behind a PROXY listener the wrapper below has
already replaced the peer address (L{relaygate.proxy_protocol}).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from relaygate.config.limits import LimitsConfig
from relaygate.wrapping import FactoryWrapper, TransportWrapper

MINUTE: Final = 60.0
HOUR: Final = 3600.0
# Event kinds counted in a window.
CONNECTIONS: Final = "connections"
AUTH_FAILURES: Final = "auth_failures"
# The most events kept per address and kind: enough for any sane limit, and bounded memory
# whatever a client does.
_MAX_EVENTS: Final = 10000
# The most early bytes kept for the front while the store decides. Reading is paused while it
# decides, so only what arrived with the connection (one read, at most 64 KiB) is held; a
# transport that reads on regardless is cut off here, not buffered without end.
MAX_HELD: Final = 65536


class LimitStore(Protocol):
    """Where the counts live. Every answer is a Deferred, so a networked store fits."""

    def open_connection(self, address: str) -> Deferred[int]:
        """Count one more open connection from C{address}; fire with the number now open."""

    def close_connection(self, address: str) -> None:
        """Count one connection from C{address} fewer."""

    def add_event(self, kind: str, address: str, window: float) -> Deferred[int]:
        """Record an event; fire with the number of C{kind} events in the last C{window} s."""

    def count_events(self, kind: str, address: str, window: float) -> Deferred[int]:
        """Fire with the number of C{kind} events from C{address} in the last C{window} s."""


class MemoryLimitStore:
    """L{LimitStore} in this process's memory, timed by the injected clock."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._open: dict[str, int] = {}
        self._events: dict[tuple[str, str], deque[float]] = {}
        self._operations = 0

    def open_connection(self, address: str) -> Deferred[int]:
        count = self._open.get(address, 0) + 1
        self._open[address] = count
        return succeed(count)

    def close_connection(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def _recent(self, kind: str, address: str, window: float) -> deque[float] | None:
        events = self._events.get((kind, address))
        if events is None:
            return None
        oldest = self._clock.seconds() - window
        while events and events[0] <= oldest:
            events.popleft()
        if not events:
            del self._events[(kind, address)]
            return None
        return events

    def add_event(self, kind: str, address: str, window: float) -> Deferred[int]:
        self._sweep(window)
        events = self._recent(kind, address, window)
        if events is None:
            events = self._events[(kind, address)] = deque(maxlen=_MAX_EVENTS)
        events.append(self._clock.seconds())
        return succeed(len(events))

    def count_events(self, kind: str, address: str, window: float) -> Deferred[int]:
        events = self._recent(kind, address, window)
        return succeed(0 if events is None else len(events))

    def _sweep(self, window: float) -> None:
        """Now and then, forget addresses whose events are all older than an hour."""
        self._operations += 1
        if self._operations % 1000:
            return
        oldest = self._clock.seconds() - max(window, HOUR)
        for key in [key for key, events in self._events.items() if events[-1] <= oldest]:
            del self._events[key]

    def open_counts(self) -> dict[str, int]:
        """The open connections per address (for tests and metrics)."""
        return dict(self._open)


# What each protocol says before closing a client over a limit. SMTP's 421 follows Postfix.
_REFUSALS: Final = {
    "smtp": b"421 4.7.0 %(name)s Error: %(why)s\r\n",
    "imap": b"* BYE %(why)s\r\n",
    "pop3": b"-ERR %(why)s\r\n",
}
TOO_MANY_CONNECTIONS: Final = b"too many connections from your address"
TOO_MANY_NEW_CONNECTIONS: Final = b"too many connections from your address, slow down"
TOO_MANY_AUTH_FAILURES: Final = b"too many failed logins from your address, try again later"


def refusal(protocol: str, server_name: str, why: bytes) -> bytes:
    """The line C{protocol} sends before closing a client over a limit."""
    return _REFUSALS[protocol] % {b"name": server_name.encode("idna"), b"why": why}


class Limits:
    """The C{[limits]} policy over a L{LimitStore}, shared by every listener of a process."""

    _log = Logger()

    def __init__(self, config: LimitsConfig, store: LimitStore) -> None:
        self.config = config
        self.store = store

    async def admit(self, address: str) -> bytes | None:
        """Decide whether a new connection from C{address} may go on.

        @return: C{None} when it may (it is then counted as open: call L{release} when it
            ends), or why not (one of the C{TOO_MANY_*} texts).
        """
        config = self.config
        if config.auth_failures_per_hour:
            failures = await self.store.count_events(AUTH_FAILURES, address, HOUR)
            if failures >= config.auth_failures_per_hour:
                return TOO_MANY_AUTH_FAILURES
        if config.connections_per_minute:
            recent = await self.store.count_events(CONNECTIONS, address, MINUTE)
            if recent >= config.connections_per_minute:
                return TOO_MANY_NEW_CONNECTIONS
        if config.connections_per_address:
            open_now = await self.store.open_connection(address)
            if open_now > config.connections_per_address:
                self.store.close_connection(address)
                return TOO_MANY_CONNECTIONS
        if config.connections_per_minute:
            await self.store.add_event(CONNECTIONS, address, MINUTE)
        return None

    def release(self, address: str) -> None:
        """A connection L{admit} let in has ended."""
        if self.config.connections_per_address:
            self.store.close_connection(address)

    async def auth_blocked(self, address: str) -> bool:
        """True when C{address} has failed too many logins this hour to try again."""
        if not self.config.auth_failures_per_hour:
            return False
        failures = await self.store.count_events(AUTH_FAILURES, address, HOUR)
        return failures >= self.config.auth_failures_per_hour

    async def auth_failed(self, address: str) -> bool:
        """Count a failed login from C{address}; True when that reaches the hourly limit."""
        if not self.config.auth_failures_per_hour:
            return False
        failures = await self.store.add_event(AUTH_FAILURES, address, HOUR)
        return failures >= self.config.auth_failures_per_hour


class LimitedConnection(TransportWrapper):
    """Lets a connection reach the front only when L{Limits.admit} says so."""

    _log = Logger()

    def __init__(self, factory: LimitedFactory) -> None:
        self._factory = factory
        self._address = ""
        self._admitted = False
        self._held = b""
        self._paused = False
        self.limits = factory.limits

    @override
    def connectionMade(self) -> None:
        self._address = str(getattr(self.getPeer(), "host", ""))
        # A networked store may take a while: read nothing more until it has decided, so a
        # client cannot make us hold its bytes without bound (the front applies its own
        # limits only once it exists).
        self._paused = True
        self._stream().pauseProducing()
        deciding = Deferred.fromCoroutine(self._factory.limits.admit(self._address))
        deciding.addCallbacks(self._decided, self._failed)

    def _stream(self) -> Any:
        """The real transport, a TCP or TLS one: a producer that can be aborted."""
        assert self.transport is not None
        return self.transport

    def _decided(self, why: bytes | None) -> None:
        if self._paused and self.transport is not None and not self.disconnecting:
            # Resumed before the front is connected, so a front that pauses the transport
            # itself (for the held bytes) keeps it paused.
            self._paused = False
            self._stream().resumeProducing()
        if self.transport is None or self.disconnecting:
            if why is None:
                self._factory.limits.release(self._address)
            return
        if why is not None:
            self._log.info(
                "refusing {client} on {protocol}: {why}",
                client=self._address,
                protocol=self._factory.protocol_name,
                why=why.decode("ascii"),
            )
            self.write(refusal(self._factory.protocol_name, self._factory.server_name, why))
            self.loseConnection()
            return
        self._admitted = True
        wrapped = self._factory.wrapped_factory.buildProtocol(self.getPeer())
        if wrapped is None:
            self.loseConnection()
            return
        held, self._held = self._held, b""
        self.connect_wrapped(wrapped, held)

    def _failed(self, failure: Failure) -> None:
        # A store that fails must not lock everyone out: let the connection in, and say so.
        self._log.failure("limit store failed; admitting {client}", failure, client=self._address)
        self._decided(None)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
        elif not self._admitted:
            # A networked store is still deciding: keep what the client says for the front,
            # up to a bound (reading is paused, so only a transport that ignores it gets here).
            if self.disconnecting:
                return
            if len(self._held) + len(data) > MAX_HELD:
                self._log.info(
                    "closing {client}: over {limit} bytes before the limits decided",
                    client=self._address,
                    limit=MAX_HELD,
                )
                self._held = b""
                self.disconnecting = True
                self._stream().abortConnection()
                return
            self._held += data

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self._admitted:
            self._admitted = False
            self._factory.limits.release(self._address)
        super().connectionLost(reason)


class LimitedFactory(FactoryWrapper):
    """Wraps a listener's factory with the connection limits."""

    def __init__(
        self, wrapped_factory: IProtocolFactory, limits: Limits, protocol: str, server_name: str
    ) -> None:
        super().__init__(wrapped_factory)
        self.limits = limits
        self.protocol_name = protocol
        self.server_name = server_name

    @override
    def buildProtocol(self, addr: IAddress | None) -> LimitedConnection:
        return LimitedConnection(self)

    def __getattr__(self, name: str) -> Any:
        # Code that looks at a listener's factory (tests, tools) still finds the front's.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["wrapped_factory"], name)


def limits_for(transport: object) -> Limits | None:
    """The L{Limits} a connection was admitted under (C{None} when no limit is on).

    The limit wrapper is the front's transport, so the front finds it there without the
    service having to hand it to every front.
    """
    found = getattr(transport, "limits", None)
    return found if isinstance(found, Limits) else None


def new_limits(config: LimitsConfig, clock: IReactorTime) -> Limits | None:
    """The process's L{Limits} over an in-memory store, or C{None} when no limit is set."""
    if not config.any:
        return None
    return Limits(config, MemoryLimitStore(clock))
