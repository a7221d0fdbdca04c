"""Twisted's C{TimeoutMixin} interface on one timer that moves only when it fires early.

C{TimeoutMixin.resetTimeout} moves its C{DelayedCall} on every read, and every session that
also has a hard limit keeps a second timer beside it. Here each limit is a deadline (a float
that a read just overwrites) and one C{DelayedCall} is armed for the earliest of them; when it
fires before a deadline that moved later, it re-arms for what is left. A session then costs one
timer, armed once and cancelled once, however many commands it sends
(docs/performance.md, "The fourth round").
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols.policies import TimeoutMixin
from typing_extensions import override


class LazyTimeoutMixin(TimeoutMixin):
    """C{setTimeout}/C{resetTimeout}/C{timeoutConnection} as in C{TimeoutMixin}, plus one
    fixed deadline (L{set_hard_deadline}); the class sets C{timeout_clock} before use.
    """

    timeout_clock: IReactorTime
    _period: float | None = None
    _idle_deadline: float | None = None
    _hard_deadline: float | None = None
    _hard_expired: Callable[[], None] | None = None
    _lazy_timer: IDelayedCall | None = None
    _armed_for = 0.0

    @override
    def setTimeout(self, period: float | None) -> float | None:  # type: ignore[override]
        """Time out after C{period} seconds of silence (None: not at all); the old period."""
        previous, self._period = self._period, period
        if period is None:
            self._idle_deadline = None
            return previous
        due = self._idle_deadline = self.timeout_clock.seconds() + period
        if self._lazy_timer is None or due < self._armed_for:
            self._arm()
        return previous

    @override
    def resetTimeout(self) -> None:
        """Something was received: the silence starts again (a float written, no timer moved)."""
        period = self._period
        if self._idle_deadline is not None and period is not None:
            self._idle_deadline = self.timeout_clock.seconds() + period

    def set_hard_deadline(self, seconds: float, expired: Callable[[], None]) -> None:
        """Call C{expired} after C{seconds}, however busy the connection is."""
        self._hard_deadline = self.timeout_clock.seconds() + seconds
        self._hard_expired = expired
        self._arm()

    def stop_timeouts(self) -> None:
        """The connection is gone: forget every deadline and cancel the timer."""
        self._idle_deadline = self._hard_deadline = self._hard_expired = None
        timer, self._lazy_timer = self._lazy_timer, None
        if timer is not None:
            timer.cancel()

    def _arm(self) -> None:
        idle, hard = self._idle_deadline, self._hard_deadline
        due = idle if hard is None else hard if idle is None or hard < idle else idle
        if due is None:
            # An armed timer stays: it fires, finds nothing due and stops; the next deadline
            # then need not arm a new one (stop_timeouts cancels it when the connection goes).
            return
        timer = self._lazy_timer
        if timer is not None:
            if due >= self._armed_for:
                return
            # Sooner than armed. Not DelayedCall.reset: moving a call sooner searches the
            # reactor's whole heap of timers; a cancelled one is dropped when it comes up.
            timer.cancel()
        left = max(due - self.timeout_clock.seconds(), 0.0)
        self._lazy_timer = self.timeout_clock.callLater(left, self._lazy_fired)
        self._armed_for = due

    def _lazy_fired(self) -> None:
        self._lazy_timer = None
        now = self.timeout_clock.seconds()
        if self._hard_deadline is not None and now >= self._hard_deadline:
            expired = self._hard_expired
            self._hard_deadline = self._hard_expired = None
            assert expired is not None
            expired()
        elif self._idle_deadline is not None and now >= self._idle_deadline:
            self._idle_deadline = None
            self.timeoutConnection()
        if self._lazy_timer is None:
            self._arm()
