"""Idle SMTP backend connections kept for the next session on the same route.

What Postfix's SMTP client calls its connection cache (C{smtp_connection_cache_time_limit},
C{smtp_connection_reuse_time_limit}): a session that ends with its backend connection idle and
clean (no transaction open there, no reply awaited) leaves the connection here for a few
seconds, and the next session routed the same way carries on with it instead of connecting,
reading a greeting, saying EHLO and, at the end, QUIT. Measured at 1 KiB x 50 on the shared
benchmark, that is about a quarter of the gateway's system calls for a small message
(``docs/performance.md``).

Only connections that know nothing of their client are kept: none that carried XCLIENT, a
PROXY header or a backend login (L{relaygate.smtp.backend_leg.BackendLeg} decides). The pool
itself only keeps, hands out and expires them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from relaygate.smtp.backend import SMTPBackendClient

MAX_IDLE_PER_ROUTE = 64
"""Idle connections kept per route; past that, a session ending closes its own."""


@dataclass
class _Idle:
    backend: SMTPBackendClient
    since: float


class BackendPool:
    """Idle backend connections by route, each kept for C{idle} seconds at most.

    @param idle: seconds an idle connection is kept (C{[smtp] backend_connection_cache});
        0 keeps none.
    @param max_age: a connection older than this (seconds since it was made) is closed instead
        of kept (C{[smtp] backend_connection_reuse}).
    """

    def __init__(self, clock: IReactorTime, idle: float, max_age: float) -> None:
        self._clock = clock
        self._idle_time = idle
        self._max_age = max_age
        # Each route's list is oldest first: sessions take the newest, the sweep ends the oldest.
        self._idle: dict[Hashable, list[_Idle]] = {}
        self._closed = idle <= 0
        # One timer for the whole pool, due when the oldest kept connection has been idle long
        # enough; not one per kept connection, armed at every session's end and cancelled at
        # the next one's start.
        self._sweep: IDelayedCall | None = None

    @property
    def enabled(self) -> bool:
        """True while connections may be kept (not turned off, not closed)."""
        return not self._closed

    def take(self, key: Hashable) -> SMTPBackendClient | None:
        """The most recently kept open connection for C{key}, or None."""
        kept = self._idle.get(key)
        while kept:
            entry = kept.pop()
            if entry.backend.is_open:
                if not kept:
                    del self._idle[key]
                return entry.backend
        self._idle.pop(key, None)
        return None

    def give(self, key: Hashable, backend: SMTPBackendClient) -> bool:
        """Keep C{backend} for C{key}; False when it may not be kept (the caller closes it)."""
        if self._closed or not backend.is_open:
            return False
        if self._clock.seconds() - backend.connected_at >= self._max_age:
            return False
        kept = self._idle.setdefault(key, [])
        if len(kept) >= MAX_IDLE_PER_ROUTE:
            return False
        kept.append(_Idle(backend, self._clock.seconds()))
        if self._sweep is None:
            self._sweep = self._clock.callLater(self._idle_time, self._expire)
        return True

    def _expire(self) -> None:
        """Close what has been idle for C{idle} seconds; come back when the next one has."""
        self._sweep = None
        now = self._clock.seconds()
        next_due: float | None = None
        for key, kept in list(self._idle.items()):
            while kept and kept[0].since + self._idle_time <= now:
                kept.pop(0).backend.close()
            if not kept:
                del self._idle[key]
                continue
            due = kept[0].since + self._idle_time
            next_due = due if next_due is None else min(next_due, due)
        if next_due is not None:
            self._sweep = self._clock.callLater(next_due - now, self._expire)

    def close(self) -> None:
        """Close every kept connection (with QUIT) and keep none from now on: the listener
        stopped, for a drain, a reload or the end of the process."""
        self._closed = True
        sweep, self._sweep = self._sweep, None
        if sweep is not None:
            sweep.cancel()
        idle, self._idle = self._idle, {}
        for kept in idle.values():
            for entry in kept:
                entry.backend.close()

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._idle.values())
