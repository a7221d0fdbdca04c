"""Tests for L{relaygate.ops.sessions} and L{relaygate.ops.drain}."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relaygate.ops.drain import CUT_GRACE, Drain, DrainResult
from relaygate.ops.sessions import KICK, SHUTDOWN, LiveSession, SessionRegistry


class FakeHooks:
    """Records what the registry asked of a session; ends it on close, as a front would."""

    def __init__(self) -> None:
        self.closed: list[str] = []
        self.drained = 0
        self.session: LiveSession | None = None

    def close(self, reason: str) -> None:
        self.closed.append(reason)
        assert self.session is not None
        self.session.end()

    def drain(self) -> None:
        self.drained += 1


def open_session(
    registry: SessionRegistry, user: str = "", protocol: str = "smtp"
) -> tuple[LiveSession, FakeHooks]:
    """A session in C{registry} with recording hooks."""
    hooks = FakeHooks()
    session = registry.open(protocol, "127.0.0.1:5000", "127.0.0.1:2525", hooks)
    hooks.session = session
    session.user = user
    return session, hooks


class SessionRegistryTests(SynchronousTestCase):
    """Sessions are listed with their fields and closed by user or id."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = SessionRegistry(self.clock, prefix="w1")

    def test_snapshot_lists_fields(self) -> None:
        """GET /sessions shows every documented field."""
        session, _ = open_session(self.registry, user="alice", protocol="imap")
        session.backend = "127.0.0.1:143"
        session.state = "spliced"
        session.bytes_in += 10
        session.bytes_out += 20
        self.assertEqual(
            self.successResultOf(self.registry.snapshot()),
            [
                {
                    "id": "w1.1",
                    "protocol": "imap",
                    "client": "127.0.0.1:5000",
                    "listener": "127.0.0.1:2525",
                    "user": "alice",
                    "backend": "127.0.0.1:143",
                    "started": 1000.0,
                    "bytes_in": 10,
                    "bytes_out": 20,
                    "state": "spliced",
                }
            ],
        )

    def test_ids_are_unique(self) -> None:
        """Each session gets the next id under the process prefix."""
        first, _ = open_session(self.registry)
        second, _ = open_session(self.registry)
        self.assertEqual((first.id, second.id), ("w1.1", "w1.2"))

    def test_end_removes_once(self) -> None:
        """An ended session leaves the registry; ending twice is harmless."""
        session, _ = open_session(self.registry)
        session.end()
        session.end()
        self.assertEqual(len(self.registry), 0)

    def test_close_by_user(self) -> None:
        """POST /sessions/close?user= closes every session of that user, with the kick reason."""
        _, alice1 = open_session(self.registry, user="alice")
        _, bob = open_session(self.registry, user="bob")
        _, alice2 = open_session(self.registry, user="alice")
        self.assertEqual(self.successResultOf(self.registry.close_matching("alice", None)), 2)
        self.assertEqual((alice1.closed, alice2.closed, bob.closed), ([KICK], [KICK], []))
        self.assertEqual(len(self.registry), 1)

    def test_close_by_id(self) -> None:
        """POST /sessions/close?id= closes that one session; an unknown id closes none."""
        session, hooks = open_session(self.registry)
        self.assertEqual(self.successResultOf(self.registry.close_matching(None, "w1.99")), 0)
        self.assertEqual(self.successResultOf(self.registry.close_matching(None, session.id)), 1)
        self.assertEqual(hooks.closed, [KICK])

    def test_empty_user_matches_nobody(self) -> None:
        """A session without a login is not closed by a user match."""
        open_session(self.registry)
        self.assertEqual(self.registry.close(user=None, session_id=None), 0)
        self.assertEqual(self.registry.close(user="", session_id=""), 0)

    def test_when_empty(self) -> None:
        """when_empty fires at once with no session, else when the last one ends."""
        self.successResultOf(self.registry.when_empty())
        session, _ = open_session(self.registry)
        waiting = self.registry.when_empty()
        self.assertNoResult(waiting)
        session.end()
        self.successResultOf(waiting)


class GenerationTests(SynchronousTestCase):
    """A reload waits for the sessions of an old configuration only."""

    def test_when_generation_empty(self) -> None:
        """when_empty(generation) ignores sessions of other generations."""
        registry = SessionRegistry(Clock(), prefix="w1")
        hooks = FakeHooks()
        old = registry.open("smtp", "c", "l", hooks, generation=1)
        new = registry.open("smtp", "c", "l", hooks, generation=2)
        waiting = registry.when_empty(generation=1)
        everything = registry.when_empty()
        self.assertEqual((registry.count(1), registry.count(2), registry.count()), (1, 1, 2))
        old.end()
        self.successResultOf(waiting)
        self.assertNoResult(everything)
        new.end()
        self.successResultOf(everything)

    def test_cancelled_waiter_forgotten(self) -> None:
        """A cancelled wait is dropped and does not fire later."""
        registry = SessionRegistry(Clock(), prefix="w1")
        session = registry.open("smtp", "c", "l", FakeHooks())
        waiting = registry.when_empty()
        waiting.cancel()
        self.failureResultOf(waiting)
        session.end()


class DrainTests(SynchronousTestCase):
    """The drain stops listeners, asks sessions to drain, and ends at zero or the deadline."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = SessionRegistry(self.clock, prefix="w1")
        self.stopped = 0
        self.drain = Drain(self.registry, self.clock, 30.0, self.stop_accepting)

    def stop_accepting(self) -> Deferred[None]:
        self.stopped += 1
        return succeed(None)

    def test_no_sessions_ends_at_once(self) -> None:
        """With nothing open the drain is over as soon as it starts."""
        with capturedLogs() as events:
            result = self.successResultOf(self.drain.start())
        self.assertEqual(result, DrainResult(finished=0, cut=0, duration=0.0))
        self.assertEqual(self.stopped, 1)
        self.assertEqual(
            [e["log_format"].split(":")[0] for e in events],
            ["draining", "drain over after {duration}s"],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sessions_asked_to_drain_and_finish(self) -> None:
        """Every session is asked once; the drain ends when the last one closes."""
        first, first_hooks = open_session(self.registry)
        second, second_hooks = open_session(self.registry)
        done = self.drain.start()
        self.assertTrue(self.drain.draining)
        self.assertEqual((first_hooks.drained, second_hooks.drained), (1, 1))
        first.end()
        self.assertNoResult(done)
        self.clock.advance(2)
        second.end()
        self.assertEqual(self.successResultOf(done), DrainResult(2, 0, 2.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_cuts_the_rest(self) -> None:
        """At drain_timeout the sessions still open are closed with the shutdown reason."""
        open_session(self.registry)
        _, stuck = open_session(self.registry, protocol="imap")
        self.registry.__iter__().__next__().end()
        done = self.drain.start()
        self.clock.advance(29.9)
        self.assertNoResult(done)
        with capturedLogs() as events:
            self.clock.advance(0.1)
        self.assertEqual(stuck.closed, [SHUTDOWN])
        self.assertEqual(self.successResultOf(done), DrainResult(0, 1, 30.0))
        self.assertEqual((events[-1]["finished"], events[-1]["cut"]), (0, 1))

    def test_stop_now(self) -> None:
        """A second signal cuts every open session at once and ends the drain."""
        _, hooks = open_session(self.registry)
        first = self.drain.start()
        second = self.drain.start()
        self.assertEqual(self.stopped, 1)
        self.assertEqual(hooks.drained, 1)
        now = self.drain.stop_now()
        self.assertEqual(hooks.closed, [SHUTDOWN])
        for d in (first, second, now):
            self.assertEqual(self.successResultOf(d), DrainResult(0, 1, 0.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cut_session_gets_time_to_say_goodbye(self) -> None:
        """A cut session that is slow to close gets CUT_GRACE seconds before the drain ends."""
        hooks = FakeHooks()
        session = self.registry.open("smtp", "c", "l", hooks)
        hooks.close = lambda reason: hooks.closed.append(reason)  # type: ignore[method-assign]
        done = self.drain.stop_now()
        self.assertEqual(hooks.closed, [SHUTDOWN])
        self.assertNoResult(done)
        self.clock.advance(CUT_GRACE)
        self.assertEqual(self.successResultOf(done).cut, 1)
        session.end()

    def test_stop_now_without_start(self) -> None:
        """SIGINT before any SIGTERM still stops the listeners and closes everything."""
        _, hooks = open_session(self.registry)
        self.assertEqual(self.successResultOf(self.drain.stop_now()).cut, 1)
        self.assertEqual((self.stopped, hooks.closed), (1, [SHUTDOWN]))

    def test_listener_failure_is_logged(self) -> None:
        """A listener that fails to stop is logged and does not stop the drain."""
        drain = Drain(self.registry, self.clock, 30.0, lambda: 1 / 0)
        with capturedLogs() as events:
            self.successResultOf(drain.start())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn("log_failure", events[1])
