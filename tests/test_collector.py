"""Tests for L{relaygate.collector}: the startup heap frozen, young collections less often."""

from __future__ import annotations

import gc

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from relaygate.collector import YOUNG_THRESHOLD, tune_collector


class TuneCollectorTests(SynchronousTestCase):
    """Nothing changes until the reactor runs; then the heap is frozen and the threshold set."""

    def setUp(self) -> None:
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)

    def test_waits_for_the_reactor(self) -> None:
        """Building the service changes nothing: tests and tools that never run it keep
        CPython's collector as it was."""
        before = gc.get_threshold()
        reactor = MemoryReactor()
        tune_collector(reactor)
        self.assertEqual(gc.get_threshold(), before)
        self.assertEqual(len(reactor.whenRunningHooks), 1)

    def test_freezes_and_raises_the_young_threshold(self) -> None:
        """Once running: the objects alive then are frozen, young collections come every
        C{YOUNG_THRESHOLD} allocations, the older generations keep their settings."""
        _, older, oldest = gc.get_threshold()
        reactor = MemoryReactor()
        tune_collector(reactor)
        reactor.run()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(gc.get_threshold(), (YOUNG_THRESHOLD, older, oldest))
