"""One timer for all the auth requests in flight, each timed out C{timeout} seconds after it left.

C{Deferred.addTimeout} arms a C{DelayedCall} for every request and cancels it at the answer:
a timer pushed on and taken off the reactor's heap, and the callbacks around it, per message.
Every request here has the same timeout, so the order they were sent in is the order they fall
due: L{Deadlines} keeps them in that order and one timer, due for the oldest, expires what is
overdue and comes back for the next (docs/performance.md, "The fourth round").
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class Deadlines:
    """Call each watched request's C{expire} C{timeout} seconds after L{watch}, unless L{done}."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._tokens = itertools.count()
        self._pending: OrderedDict[int, tuple[float, Callable[[], None]]] = OrderedDict()
        self._timer: IDelayedCall | None = None
        self._sweeping = False

    def watch(self, expire: Callable[[], None]) -> int:
        """Start timing a request; the token is for L{done}."""
        token = next(self._tokens)
        self._pending[token] = (self._clock.seconds() + self._timeout, expire)
        if self._timer is None and not self._sweeping:
            self._timer = self._clock.callLater(self._timeout, self._sweep)
        return token

    def done(self, token: int) -> None:
        """The request was answered, failed or was cancelled: no longer timed (idempotent).

        With nothing left in flight the timer goes too: an idle gateway holds none.
        """
        pending = self._pending
        pending.pop(token, None)
        if not pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._pending)

    def _sweep(self) -> None:
        self._timer = None
        self._sweeping = True
        pending = self._pending
        now = self._clock.seconds()
        try:
            while pending:
                token, (due, expire) = next(iter(pending.items()))
                if due > now:
                    break
                del pending[token]
                try:
                    expire()
                except Exception:
                    self._log.failure("expiring an auth request")
        finally:
            self._sweeping = False
        if pending:
            due = next(iter(pending.values()))[0]
            self._timer = self._clock.callLater(max(due - now, 0.0), self._sweep)
