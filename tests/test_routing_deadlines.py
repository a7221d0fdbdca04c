"""L{relaygate.routing.deadlines.Deadlines}: each request's timeout, on one timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.routing.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    """Requests time out C{timeout} seconds after they were watched, unless done first."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock, 2.0)
        self.expired: list[tuple[str, float]] = []

    def _watch(self, name: str) -> int:
        return self.deadlines.watch(lambda: self.expired.append((name, self.clock.seconds())))

    def test_each_at_its_own_time(self) -> None:
        """Requests sent at 0, 0.5 and 1.5 expire at 2, 2.5 and 3.5, one timer at a time."""
        self._watch("a")
        self.clock.advance(0.5)
        self._watch("b")
        self.clock.advance(1.0)
        self._watch("c")
        for _ in range(8):
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 1)
            self.clock.advance(0.25)
        self.assertEqual(self.expired, [("a", 2.0), ("b", 2.5), ("c", 3.5)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_done_is_not_expired(self) -> None:
        """An answered request never expires; with none in flight, no timer is left."""
        first = self._watch("a")
        second = self._watch("b")
        self.deadlines.done(first)
        self.clock.advance(2.0)
        self.assertEqual(self.expired, [("b", 2.0)])
        self.deadlines.done(second)
        third = self._watch("c")
        self.deadlines.done(third)
        self.deadlines.done(third)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.deadlines), 0)

    def test_busy_arms_no_timer_each(self) -> None:
        """While others are in flight, a request sent and answered arms and cancels nothing."""
        self._watch("long")
        (timer,) = self.clock.getDelayedCalls()
        for _ in range(10):
            self.clock.advance(0.1)
            self.deadlines.done(self._watch("quick"))
        self.assertEqual(self.clock.getDelayedCalls(), [timer])

    def test_retry_while_sweeping(self) -> None:
        """An expiry that sends a retry: the retry gets a full timeout, and a request due
        before it still expires on time."""

        def retry() -> None:
            self.expired.append(("a", self.clock.seconds()))
            self._watch("a again")

        self.deadlines.watch(retry)
        self.clock.advance(1.0)
        self._watch("b")
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.expired, [("a", 2.0), ("b", 3.0), ("a again", 4.0)])

    def test_failing_expiry_is_logged(self) -> None:
        """An expiry that raises is logged; the next overdue request still expires."""

        def broken() -> None:
            raise RuntimeError("bug")

        self.deadlines.watch(broken)
        self._watch("b")
        self.clock.advance(2.0)
        self.assertEqual(self.expired, [("b", 2.0)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
