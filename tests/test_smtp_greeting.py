"""Unit tests for L{relaygate.smtp.greeting}: the greeting delay on a clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.smtp.greeting import GreetingDelay


class GreetingDelayTests(SynchronousTestCase):
    """The delay fires once, or never after stop()."""

    def test_greets_after_the_delay(self) -> None:
        """greet runs once, C{delay} seconds after start()."""
        clock, greeted = Clock(), []
        delay = GreetingDelay(clock, 2.0, lambda: greeted.append(clock.seconds()))
        delay.start()
        clock.advance(1.9)
        self.assertEqual(greeted, [])
        clock.advance(0.1)
        self.assertEqual(greeted, [2.0])
        delay.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_cancels(self) -> None:
        """stop() (the client talked first, or left) means no greeting."""
        clock, greeted = Clock(), []
        delay = GreetingDelay(clock, 2.0, lambda: greeted.append(clock.seconds()))
        delay.start()
        delay.stop()
        clock.advance(5)
        self.assertEqual(greeted, [])
