"""Tests for L{relaygate.login.limits}: failed logins against C{[limits]}, store failures."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.config.limits import LimitsConfig
from relaygate.login.limits import auth_blocked, count_auth_failure
from relaygate.policy import Limits, MemoryLimitStore


class _Transport:
    """A front's transport as the limit wrapper presents it: it carries C{limits}."""

    def __init__(self, limits: Limits | None) -> None:
        self.limits = limits


class _BrokenStore(MemoryLimitStore):
    """A store whose every count fails (a networked store that is down)."""

    def count_events(self, *args: Any) -> Deferred[int]:
        return fail(ConnectionError("store down"))

    def add_event(self, *args: Any) -> Deferred[int]:
        return fail(ConnectionError("store down"))


class LimitsTests(SynchronousTestCase):
    """Counting and checking failed logins per address."""

    def test_without_limits(self) -> None:
        """No [limits]: nothing is counted and nothing blocks."""
        transport = _Transport(None)
        self.assertFalse(
            self.successResultOf(Deferred.fromCoroutine(auth_blocked(transport, "192.0.2.7")))
        )
        self.assertFalse(
            self.successResultOf(
                Deferred.fromCoroutine(count_auth_failure(transport, "192.0.2.7"))
            )
        )

    def test_counts_to_the_limit(self) -> None:
        """The failure that reaches auth_failures_per_hour says so; the address is blocked."""
        limits = Limits(LimitsConfig(auth_failures_per_hour=2), MemoryLimitStore(Clock()))
        transport = _Transport(limits)

        def count() -> bool:
            return self.successResultOf(
                Deferred.fromCoroutine(count_auth_failure(transport, "192.0.2.7"))
            )

        def blocked(ip: str) -> bool:
            return self.successResultOf(Deferred.fromCoroutine(auth_blocked(transport, ip)))

        self.assertEqual((count(), blocked("192.0.2.7")), (False, False))
        self.assertEqual((count(), blocked("192.0.2.7")), (True, True))
        self.assertFalse(blocked("192.0.2.8"))

    def test_store_failure_is_logged_not_fatal(self) -> None:
        """A failing store is logged and counts as "not over the limit"."""
        limits = Limits(LimitsConfig(auth_failures_per_hour=2), _BrokenStore(Clock()))
        transport = _Transport(limits)
        self.assertFalse(
            self.successResultOf(Deferred.fromCoroutine(auth_blocked(transport, "192.0.2.7")))
        )
        self.assertFalse(
            self.successResultOf(
                Deferred.fromCoroutine(count_auth_failure(transport, "192.0.2.7"))
            )
        )
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 2)
