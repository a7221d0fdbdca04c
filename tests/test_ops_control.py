"""Tests for L{relaygate.ops.control}: the sessions view across worker processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relaygate.ops.control import ParentControl, WorkerControl
from relaygate.ops.sessions import KICK, SessionRegistry
from tests.test_ops_sessions import open_session


class Worker:
    """A worker's control end, with its answers handed straight to the parent."""

    def __init__(self, prefix: str, parent: Callable[[], ParentControl]) -> None:
        self.registry = SessionRegistry(Clock(), prefix=prefix)
        self.control = WorkerControl(self.registry, self.reply)
        self.parent = parent
        self.requests: list[dict[str, Any]] = []
        self.silent = False

    def write(self, data: bytes) -> None:
        self.requests.append(json.loads(data))
        if self.silent:
            return
        self.control.lineReceived(data.rstrip(b"\n"))

    def reply(self, message: dict[str, Any]) -> None:
        # Through JSON, as on the real control channel.
        self.parent().reply_received(json.loads(json.dumps(message)))


class ControlTests(SynchronousTestCase):
    """The parent's view lists and closes sessions in every worker."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.workers = [Worker("a", self.get_parent), Worker("b", self.get_parent)]
        self.parent = ParentControl(lambda: [w.write for w in self.workers], self.clock)

    def get_parent(self) -> ParentControl:
        return self.parent

    def test_snapshot_gathers_all_workers(self) -> None:
        """GET /sessions through the parent lists every worker's sessions."""
        open_session(self.workers[0].registry, user="alice")
        open_session(self.workers[1].registry, user="bob")
        sessions = self.successResultOf(self.parent.snapshot())
        self.assertEqual(
            [(s["id"], s["user"]) for s in sessions], [("a.1", "alice"), ("b.1", "bob")]
        )

    def test_close_sums_counts(self) -> None:
        """A kick by user closes that user's sessions in every worker and sums the counts."""
        _, first = open_session(self.workers[0].registry, user="alice")
        _, second = open_session(self.workers[1].registry, user="alice")
        _, other = open_session(self.workers[1].registry, user="bob")
        self.assertEqual(self.successResultOf(self.parent.close_matching("alice", None)), 2)
        self.assertEqual((first.closed, second.closed, other.closed), ([KICK], [KICK], []))
        self.assertEqual(self.workers[0].requests[0]["op"], "close")

    def test_silent_worker_left_out(self) -> None:
        """A worker that does not answer within the timeout does not hold the answer up."""
        open_session(self.workers[0].registry, user="alice")
        self.workers[1].silent = True
        answer = self.parent.snapshot()
        self.assertNoResult(answer)
        self.clock.advance(2.0)
        self.assertEqual([s["user"] for s in self.successResultOf(answer)], ["alice"])

    def test_no_workers(self) -> None:
        """With no worker running the list is empty."""
        self.workers.clear()
        self.assertEqual(self.successResultOf(self.parent.snapshot()), [])

    def test_bad_request_ignored(self) -> None:
        """A line that is not a request is logged and not answered."""
        with capturedLogs() as events:
            self.workers[0].control.lineReceived(b"nonsense")
        self.assertEqual(events[0]["log_format"], "bad control request {line!r}")


class ParentGoneTests(SynchronousTestCase):
    """A worker whose parent is gone stops."""

    def test_stdin_closed_stops_the_worker(self) -> None:
        """The end of the parent's pipe calls the stop callback once."""
        stopped: list[bool] = []
        control = WorkerControl(SessionRegistry(Clock()), self.fail, lambda: stopped.append(True))
        with capturedLogs():
            control.connectionLost()
        self.assertEqual(stopped, [True])

    def test_own_stop_is_not_the_parent_gone(self) -> None:
        """Once the worker stops on its own, the end of stdin neither stops nor warns again."""
        stopped: list[bool] = []
        control = WorkerControl(SessionRegistry(Clock()), self.fail, lambda: stopped.append(True))
        control.stopping()
        with capturedLogs() as events:
            control.connectionLost()
        self.assertEqual(stopped, [])
        self.assertEqual(events, [])
