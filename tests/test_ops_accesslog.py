"""Tests for L{relaygate.ops.accesslog}: JSON lines, several writers, reopening on SIGUSR1."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any, cast

from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from relaygate.ops.accesslog import AccessLog, AccessLogService, access_line


class CallingReactor:
    """Runs callFromThread work at once, as the reactor would in its next turn."""

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:  # noqa: N802
        f(*args)


def lines(path: FilePath[str]) -> list[dict[str, Any]]:
    """The JSON objects in the file at C{path}, one per line."""
    return [json.loads(line) for line in path.getContent().splitlines()]


class AccessLogTests(SynchronousTestCase):
    """Access events become flat JSON lines; other events are left to the text log."""

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.path.parent().makedirs(ignoreExistingDirectory=True)
        self.publisher = LogPublisher()
        self.access = Logger(namespace="relaygate.access", observer=self.publisher)

    def test_line_format(self) -> None:
        """A line has time, message and the event's fields, without log_ keys."""
        line = access_line(
            {
                "log_time": 0.25,
                "log_format": "session {session_id} closed",
                "log_namespace": "relaygate.access",
                "session_id": "a.1",
                "recipients": [("a@example.org", "250 ok")],
                "odd": object,
            }
        )
        self.assertTrue(line.endswith(b"}\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(
            json.loads(line),
            {
                "time": "1970-01-01T00:00:00.250+00:00",
                "message": "session a.1 closed",
                "session_id": "a.1",
                "recipients": [["a@example.org", "250 ok"]],
                "odd": "<class 'object'>",
            },
        )

    def test_only_access_events(self) -> None:
        """Events of other namespaces are not written."""
        log = AccessLog(self.path.path)
        self.addCleanup(log.close)
        self.publisher.addObserver(log)
        self.access.info("one {x}", x=1)
        Logger(namespace="relaygate.other", observer=self.publisher).info("not this")
        self.access.info("two {x}", x="line\nbreak")
        self.assertEqual(
            [(e["message"], e["x"]) for e in lines(self.path)],
            [("one 1", 1), ("two line\nbreak", "line\nbreak")],
        )

    def test_two_writers_append(self) -> None:
        """Two workers writing the same file each append whole lines."""
        first, second = AccessLog(self.path.path), AccessLog(self.path.path)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        for n in range(20):
            writer = first if n % 2 else second
            writer({"log_namespace": "relaygate.access", "log_format": "{n}", "n": n})
        self.assertEqual([e["n"] for e in lines(self.path)], list(range(20)))

    def test_reopen_after_move(self) -> None:
        """After the file is moved away, reopen starts a new file at the path."""
        log = AccessLog(self.path.path)
        self.addCleanup(log.close)
        self.publisher.addObserver(log)
        self.access.info("before")
        rotated = self.path.siblingExtension(".1")
        self.path.moveTo(rotated)
        self.access.info("late")
        log.reopen()
        self.access.info("after")
        self.assertEqual([e["message"] for e in lines(rotated)], ["before", "late"])
        self.assertEqual([e["message"] for e in lines(self.path)], ["after"])

    def test_closed_log_drops(self) -> None:
        """A closed log writes nothing."""
        log = AccessLog(self.path.path)
        log.close()
        log({"log_namespace": "relaygate.access", "log_format": "x"})
        self.assertEqual(self.path.getContent(), b"")

    def test_write_error_goes_to_text_log(self) -> None:
        """A failed write is reported as an error event outside the access namespace."""
        log = AccessLog(self.path.path)
        self.addCleanup(log.close)
        events: list[dict[str, Any]] = []
        self.patch(AccessLog, "_log", Logger(observer=cast(ILogObserver, events.append)))

        def failing(fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        self.patch(os, "write", failing)
        log({"log_namespace": "relaygate.access", "log_format": "x"})
        self.assertEqual(events[0]["error"], "No space left on device")


class AccessLogServiceTests(SynchronousTestCase):
    """The service adds the observer and reopens the file on SIGUSR1."""

    def test_sigusr1_reopens(self) -> None:
        """logrotate's SIGUSR1 makes the next event go to a new file."""
        path = FilePath(self.mktemp())
        path.parent().makedirs(ignoreExistingDirectory=True)
        publisher = LogPublisher()
        access = Logger(namespace="relaygate.access", observer=publisher)
        previous = signal.getsignal(signal.SIGUSR1)
        service = AccessLogService(path.path, CallingReactor(), publisher)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        access.info("first")
        path.moveTo(path.siblingExtension(".1"))
        os.kill(os.getpid(), signal.SIGUSR1)
        access.info("second")
        self.assertEqual([e["message"] for e in lines(path)], ["second"])
        service.stopService()
        access.info("after stop")
        self.assertEqual([e["message"] for e in lines(path)], ["second"])
        self.assertEqual(signal.getsignal(signal.SIGUSR1), previous)
