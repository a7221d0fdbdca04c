"""Graceful drain: stop accepting, let sessions finish, and end at zero sessions or a deadline.

On SIGTERM the service calls L{Drain.start}: the listeners stop at once (new connections are
refused), every open session is asked to drain through its L{SessionHooks.drain} (an idle SMTP
session gets C{421 4.3.2} at once, one in a transaction after the backend's reply; spliced IMAP
and POP3 sessions are left to run), and the drain ends as soon as the last session closes, or
at C{drain_timeout}, when the sessions still open are closed. One log line marks the start and
one the end. L{Drain.stop_now} (a second SIGTERM, or SIGINT) ends it at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaygate.ops.sessions import SHUTDOWN, SessionRegistry

CUT_GRACE = 2.0
"""Seconds the closed sessions get to send their goodbye before the drain is over."""


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: sessions that finished by themselves, and sessions cut."""

    finished: int
    cut: int
    duration: float


class Drain:
    """Coordinates one process's drain over its L{SessionRegistry}.

    @param stop_accepting: closes every listener; may return a Deferred (errors are logged).
    """

    _log = Logger()

    def __init__(
        self,
        sessions: SessionRegistry,
        clock: IReactorTime,
        timeout: float,
        stop_accepting: Callable[[], Any],
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._timeout = timeout
        self._stop_accepting = stop_accepting
        self._started = False
        self._cutting = False
        self._result: DrainResult | None = None
        self._waiters: list[Deferred[DrainResult]] = []
        self._timer: IDelayedCall | None = None
        self._empty: Deferred[None] | None = None
        self._started_at = 0.0
        self._open_at_start = 0

    def set_timeout(self, timeout: float) -> None:
        """Use C{timeout} for a drain that starts later (a reload changed drain_timeout)."""
        self._timeout = timeout

    @property
    def draining(self) -> bool:
        """True once L{start} was called: fronts refuse new work from then on."""
        return self._started

    def start(self) -> Deferred[DrainResult]:
        """Begin the drain (again: the same result); fires when it is over."""
        if self._started:
            return self._wait()
        self._started = True
        self._started_at = self._clock.seconds()
        self._open_at_start = len(self._sessions)
        self._log.info(
            "draining: stopped accepting, {sessions} session(s) open, up to {timeout}s",
            sessions=self._open_at_start,
            timeout=self._timeout,
        )
        maybeDeferred(self._stop_accepting).addErrback(self._listener_failure)
        for session in self._sessions:
            session.hooks.drain()
        self._empty = self._sessions.when_empty()
        self._empty.addCallback(lambda _: self._finish(cut=0))
        self._empty.addErrback(lambda f: f.trap(Exception))
        if self._result is None:
            self._timer = self._clock.callLater(self._timeout, self._expired)
        return self._wait()

    def stop_now(self) -> Deferred[DrainResult]:
        """End the drain at once, closing every session still open."""
        if not self._started:
            self.start()
        self._cut_remaining()
        return self._wait()

    def _wait(self) -> Deferred[DrainResult]:
        if self._result is not None:
            return succeed(self._result)
        waiter: Deferred[DrainResult] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _listener_failure(self, failure: Failure) -> None:
        self._log.failure("stopping the listeners failed", failure)

    def _expired(self) -> None:
        self._timer = None
        self._cut_remaining()

    def _cut_remaining(self) -> None:
        if self._result is not None or self._cutting:
            return
        self._cutting = True
        if self._empty is not None and not self._empty.called:
            # The sessions closed below end the registry's wait; they count as cut, not finished.
            self._empty.cancel()
        remaining = list(self._sessions)
        for session in remaining:
            session.hooks.close(SHUTDOWN)
        # Their goodbyes are written but not yet sent: stopping the reactor now would drop
        # them. Wait (briefly) for the connections to close.
        closed = self._sessions.when_empty()
        closed.addTimeout(CUT_GRACE, self._clock)
        closed.addBoth(lambda _: self._finish(cut=len(remaining)))

    def _finish(self, cut: int) -> None:
        if self._result is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._empty is not None and not self._empty.called:
            self._empty.cancel()
        duration = self._clock.seconds() - self._started_at
        result = self._result = DrainResult(
            finished=max(self._open_at_start - cut, 0), cut=cut, duration=duration
        )
        self._log.info(
            "drain over after {duration}s: {finished} session(s) finished, {cut} cut",
            finished=result.finished,
            cut=result.cut,
            duration=round(duration, 3),
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)
