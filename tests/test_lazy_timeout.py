"""L{relaygate.lazy_timeout.LazyTimeoutMixin}: TimeoutMixin's behaviour on one timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.lazy_timeout import LazyTimeoutMixin


class _Timed(LazyTimeoutMixin):
    """Records when its idle timeout and its hard deadline fire."""

    def __init__(self, clock: Clock, rearm: bool = False) -> None:
        self.timeout_clock = clock
        self.clock = clock
        self.rearm = rearm
        self.timed_out: list[float] = []
        self.expired: list[float] = []

    def timeoutConnection(self) -> None:
        self.timed_out.append(self.clock.seconds())
        if self.rearm:
            self.setTimeout(10)

    def hard(self) -> None:
        self.expired.append(self.clock.seconds())


class IdleTests(SynchronousTestCase):
    """Silence for the period times out; anything received starts the silence again."""

    def test_times_out_after_silence(self) -> None:
        """With nothing received, the timeout comes after the period, once."""
        clock = Clock()
        timed = _Timed(clock)
        self.assertIsNone(timed.setTimeout(10))
        clock.advance(9.9)
        self.assertEqual(timed.timed_out, [])
        clock.advance(0.1)
        self.assertEqual(timed.timed_out, [10])
        clock.advance(100)
        self.assertEqual(timed.timed_out, [10])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reset_moves_the_deadline_not_the_timer(self) -> None:
        """Resets push the timeout back; the one timer is neither moved nor replaced."""
        clock = Clock()
        timed = _Timed(clock)
        timed.setTimeout(10)
        (timer,) = clock.getDelayedCalls()
        for _ in range(4):
            clock.advance(2)
            timed.resetTimeout()
        self.assertEqual(clock.getDelayedCalls(), [timer])
        self.assertEqual(timer.getTime(), 10)
        clock.advance(2)  # t=10: the timer fires early and re-arms for what is left
        self.assertEqual(timed.timed_out, [])
        (rearmed,) = clock.getDelayedCalls()
        self.assertEqual(rearmed.getTime(), 18)
        clock.advance(8)
        self.assertEqual(timed.timed_out, [18])

    def test_shorter_period_comes_sooner(self) -> None:
        """A shorter period than the armed one moves the timer forward."""
        clock = Clock()
        timed = _Timed(clock)
        timed.setTimeout(60)
        self.assertEqual(timed.setTimeout(5), 60)
        clock.advance(5)
        self.assertEqual(timed.timed_out, [5])

    def test_none_stops_the_timeout(self) -> None:
        """C{setTimeout(None)}: the armed timer fires with nothing due and is not re-armed."""
        clock = Clock()
        timed = _Timed(clock)
        timed.setTimeout(10)
        timed.setTimeout(None)
        timed.resetTimeout()
        clock.advance(10)
        self.assertEqual(timed.timed_out, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout_may_rearm(self) -> None:
        """A C{timeoutConnection} that sets the timeout again gets another period."""
        clock = Clock()
        timed = _Timed(clock, rearm=True)
        timed.setTimeout(10)
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(timed.timed_out, [10, 20])
        self.assertEqual(len(clock.getDelayedCalls()), 1)


class HardDeadlineTests(SynchronousTestCase):
    """The hard deadline comes however busy the connection is, on the same timer."""

    def test_comes_despite_resets(self) -> None:
        """Resets move the idle timeout only; the deadline's callback runs, not the timeout."""
        clock = Clock()
        timed = _Timed(clock)
        timed.setTimeout(10)
        timed.set_hard_deadline(25, timed.hard)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for _ in range(5):
            clock.advance(5)
            timed.resetTimeout()
        self.assertEqual(timed.expired, [25])
        self.assertEqual(timed.timed_out, [])

    def test_idle_first(self) -> None:
        """A silence that ends before the deadline times out; the deadline stays armed."""
        clock = Clock()
        timed = _Timed(clock)
        timed.set_hard_deadline(60, timed.hard)
        timed.setTimeout(10)
        clock.advance(10)
        self.assertEqual(timed.timed_out, [10])
        clock.advance(50)
        self.assertEqual(timed.expired, [60])

    def test_stop(self) -> None:
        """C{stop_timeouts}: no timer is left and nothing fires."""
        clock = Clock()
        timed = _Timed(clock)
        timed.setTimeout(10)
        timed.set_hard_deadline(20, timed.hard)
        timed.stop_timeouts()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(100)
        self.assertEqual((timed.timed_out, timed.expired), ([], []))
