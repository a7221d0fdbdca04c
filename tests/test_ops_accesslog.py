"""Tests for L{relaygate.ops.accesslog}: the file opened while running, reopened on SIGUSR1.

The lines themselves (format, escaping, several writers) are tested in L{tests.test_observe}.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from relaygate.observe import SessionRecord, use_access_log_file
from relaygate.ops.accesslog import AccessLogService


class CallingReactor:
    """Runs callFromThread work at once, as the reactor would in its next turn."""

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:  # noqa: N802
        f(*args)


def lines(path: FilePath[str]) -> list[dict[str, Any]]:
    """The JSON objects in the file at C{path}, one per line."""
    return [json.loads(line) for line in path.getContent().splitlines()]


def emit(end: str) -> None:
    """One C{smtp.session} access event that ended with C{end}."""
    session = SessionRecord("1f.2", "192.0.2.7:51000", "127.0.0.1:2525", started=100.0)
    session.end = end
    session.emit("smtp", now=101.0)


class AccessLogServiceTests(SynchronousTestCase):
    """The service opens the file while running and reopens it on SIGUSR1."""

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.path.parent().makedirs(ignoreExistingDirectory=True)
        self.addCleanup(use_access_log_file, None)

    def test_opens_and_closes(self) -> None:
        """Events go to the file while the service runs, back to the global log after."""
        service = AccessLogService(self.path.path, CallingReactor())
        service.startService()
        emit("quit")
        service.stopService()
        with capturedLogs() as events:
            emit("timeout")
        self.assertEqual([e["end"] for e in lines(self.path)], ["quit"])
        self.assertEqual([e["end"] for e in events if "end" in e], ["timeout"])

    def test_sigusr1_reopens(self) -> None:
        """logrotate's SIGUSR1 makes the next event go to a new file."""
        service = AccessLogService(self.path.path, CallingReactor())
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        emit("first")
        rotated = self.path.siblingExtension(".1")
        self.path.moveTo(rotated)
        os.kill(os.getpid(), signal.SIGUSR1)
        emit("second")
        self.assertEqual([e["end"] for e in lines(rotated)], ["first"])
        self.assertEqual([e["end"] for e in lines(self.path)], ["second"])

    def test_stop_restores_the_signal_handler(self) -> None:
        """After stopping, SIGUSR1 has the handler it had before."""
        previous = signal.getsignal(signal.SIGUSR1)
        service = AccessLogService(self.path.path, CallingReactor())
        service.startService()
        service.stopService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), previous)
