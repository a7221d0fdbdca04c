"""The registry of live sessions: what C{GET /sessions} lists and C{POST /sessions/close} closes.

A front opens a L{LiveSession} when a client connects and updates its plain attributes as the
session moves on (user, backend, state, byte counts: attribute stores, nothing more on the
message path); the session leaves the registry when the front calls L{LiveSession.end}. Each
session carries the front's L{SessionHooks}, so the registry can close it (an administrator's
kick, the end of a drain) or ask it to drain, in its own protocol's words.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

KICK = "kick"
"""L{SessionHooks.close} reason: an administrator closed the session (SMTP C{421 4.7.0})."""

SHUTDOWN = "shutdown"
"""L{SessionHooks.close} reason: the drain timed out (SMTP C{421 4.3.2}, IMAP C{* BYE} ...)."""


class SessionHooks(Protocol):
    """What a front lets the operations side do to one of its sessions."""

    def close(self, reason: str) -> None:
        """Tell the client why (L{KICK} or L{SHUTDOWN}) in its protocol's words, and close."""

    def drain(self) -> None:
        """Finish what is in progress, then close (SMTP: 421 4.3.2 at the next command)."""


class SessionView(Protocol):
    """What the HTTP resources read: the local registry, or a parent gathering its workers."""

    def snapshot(self) -> Deferred[list[dict[str, Any]]]:
        """The open sessions, as C{GET /sessions} lists them."""

    def close_matching(self, user: str | None, session_id: str | None) -> Deferred[int]:
        """Close the sessions of C{user} or with id C{session_id}; fire with how many."""


@dataclass(eq=False)
class LiveSession:
    """One open client session, as the fronts keep it up to date."""

    id: str
    protocol: str
    client: str
    listener: str
    started: float
    hooks: SessionHooks
    registry: SessionRegistry
    user: str = ""
    backend: str = ""
    state: str = "greeting"
    bytes_in: int = 0
    bytes_out: int = 0
    generation: int = 0
    """The configuration (reload) generation the session started under."""
    ended: bool = field(default=False, init=False)

    def as_json(self) -> dict[str, Any]:
        """The fields C{GET /sessions} shows for this session.

        What only the front knows (user, backend, state) is asked of it now, through its
        hooks' optional C{facts()}, rather than reported on every change.
        """
        facts = getattr(self.hooks, "facts", None)
        if facts is not None:
            for key, value in facts().items():
                if value and key in ("user", "backend", "state"):
                    setattr(self, key, value)
        return {
            "id": self.id,
            "protocol": self.protocol,
            "client": self.client,
            "listener": self.listener,
            "user": self.user,
            "backend": self.backend,
            "started": self.started,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "state": self.state,
        }

    def end(self) -> None:
        """The connection closed: leave the registry (idempotent)."""
        if not self.ended:
            self.ended = True
            self.registry.remove(self)


class SessionRegistry:
    """The sessions open in this process, with a way to wait until none is left."""

    def __init__(self, clock: IReactorTime, prefix: str | None = None) -> None:
        self._clock = clock
        self._prefix = f"{os.getpid():x}" if prefix is None else prefix
        self._counter = itertools.count(1)
        self._sessions: dict[str, LiveSession] = {}
        self._empty_waiters: list[tuple[int | None, Deferred[None]]] = []

    def open(
        self,
        protocol: str,
        client: str,
        listener: str,
        hooks: SessionHooks,
        generation: int = 0,
    ) -> LiveSession:
        """Register a session that has just connected; its id is unique in the process group."""
        session_id = f"{self._prefix}.{next(self._counter):x}"
        session = LiveSession(
            id=session_id,
            protocol=protocol,
            client=client,
            listener=listener,
            started=self._clock.seconds(),
            hooks=hooks,
            registry=self,
            generation=generation,
        )
        self._sessions[session_id] = session
        return session

    def remove(self, session: LiveSession) -> None:
        """Forget C{session}; wake L{when_empty} waiters when it was the last."""
        self._sessions.pop(session.id, None)
        ready = [(g, w) for g, w in self._empty_waiters if not self.count(g)]
        if ready:
            self._empty_waiters = [item for item in self._empty_waiters if item not in ready]
            for _, waiter in ready:
                waiter.callback(None)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._sessions.values()))

    def count(self, generation: int | None = None) -> int:
        """How many sessions are open (of C{generation}, when given)."""
        if generation is None:
            return len(self._sessions)
        return sum(1 for s in self._sessions.values() if s.generation == generation)

    def when_empty(self, generation: int | None = None) -> Deferred[None]:
        """Fire when no session (of C{generation}, when given) is open; at once when none is."""
        if not self.count(generation):
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._forget_waiter)
        self._empty_waiters.append((generation, waiter))
        return waiter

    def _forget_waiter(self, waiter: Deferred[None]) -> None:
        self._empty_waiters = [item for item in self._empty_waiters if item[1] is not waiter]

    def matching(self, user: str | None, session_id: str | None) -> list[LiveSession]:
        """The sessions whose user is C{user} or whose id is C{session_id} (an empty one
        matches nothing: sessions before login have no user)."""
        return [
            s
            for s in self._sessions.values()
            if (user and s.user == user) or (session_id and s.id == session_id)
        ]

    def close(self, user: str | None, session_id: str | None, reason: str = KICK) -> int:
        """Close the matching sessions with C{reason}; the count closed."""
        chosen = self.matching(user, session_id)
        for session in chosen:
            session.hooks.close(reason)
        return len(chosen)

    def snapshot(self) -> Deferred[list[dict[str, Any]]]:
        """L{SessionView}: this process's sessions, oldest first."""
        return succeed([s.as_json() for s in self._sessions.values()])

    def close_matching(self, user: str | None, session_id: str | None) -> Deferred[int]:
        """L{SessionView}: an administrator's kick."""
        return succeed(self.close(user, session_id, KICK))
