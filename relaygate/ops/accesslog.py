"""``[log] access = PATH``: access events as one JSON object per line, reopened on SIGUSR1.

The observer keeps only events in the C{relaygate.access} namespace (docs/logging.md) and writes
each as one line: C{time} (ISO 8601, UTC), C{message} (the rendered text) and the event's own
fields, without Twisted's C{log_*} bookkeeping. The file is opened with C{O_APPEND} and each line
goes out in one C{write}, so several workers appending to the same file never interleave within
a line. logrotate moves the file away and sends SIGUSR1; L{AccessLog.reopen} then starts a new
file at PATH, as nginx does.

Twisted's L{jsonFileLogObserver} writes every field of an event (C{log_logger}, C{log_source}
...) in its own record-separated format, meant to be read back by Twisted; log shippers want
flat JSON lines, hence this small observer.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    ILogObserver,
    Logger,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from typing_extensions import override
from zope.interface import implementer

ACCESS_NAMESPACE = "relaygate.access"


def access_line(event: dict[str, Any]) -> bytes:
    """One access event as a JSON line (non-JSON values written as their C{repr})."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_"):
            record[key] = value
    return json.dumps(record, default=repr, ensure_ascii=False).encode("utf-8") + b"\n"


@implementer(ILogObserver)
class AccessLog:
    """Writes C{relaygate.access} events to C{path}; L{reopen} after the file was moved."""

    _log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self.reopen()

    def reopen(self) -> None:
        """Open C{path} afresh (created if missing) and close the previous file."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Stop writing; later events are dropped."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self._fd is None or event.get("log_namespace") != ACCESS_NAMESPACE:
            return
        line = access_line(event)
        try:
            # One write: O_APPEND places the whole line at the end even with other writers.
            written = os.write(self._fd, line)
            if written < len(line):  # a full disk; write what remains rather than cut the line
                os.write(self._fd, line[written:])
        except OSError as e:
            # This event is not in the access namespace, so it goes to the text log only.
            self._log.error("cannot write {path}: {error}", path=self.path, error=e.strerror)


class AccessLogService(Service):
    """Adds the L{AccessLog} to the log publisher and reopens it on SIGUSR1."""

    _log = Logger()

    def __init__(
        self, path: str, reactor: Any, publisher: LogPublisher = globalLogPublisher
    ) -> None:
        self._path = path
        self._reactor = reactor
        self._publisher = publisher
        self.access_log: AccessLog | None = None
        self._previous: Any = None

    @override
    def startService(self) -> None:
        super().startService()
        self.access_log = AccessLog(self._path)
        self._publisher.addObserver(self.access_log)
        self._previous = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes; do the file work in the reactor's turn.
        self._reactor.callFromThread(self.reopen)
        if callable(self._previous):
            # twistd rotates its own log file on SIGUSR1 when it writes one: keep doing that.
            self._previous(signum, frame)

    def reopen(self) -> None:
        """Reopen the file (what SIGUSR1 does)."""
        if self.access_log is not None:
            self.access_log.reopen()
            self._log.info("reopened the access log {path}", path=self._path)

    @override
    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None
        if self.access_log is not None:
            self._publisher.removeObserver(self.access_log)
            self.access_log.close()
            self.access_log = None
