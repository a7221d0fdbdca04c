"""``[log] access = PATH``: the access log file opened while running and reopened on SIGUSR1.

The lines themselves are written by L{relaygate.observe} (each event built once and written as
one JSON line with one C{write(2)} on an C{O_APPEND} descriptor, in every worker). This service
only opens that file for its process, and reopens it when logrotate has moved it away and sent
SIGUSR1, as nginx does.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from typing_extensions import override

from relaygate.observe import AccessLogFile, use_access_log_file


class AccessLogService(Service):
    """Sends this process's access events to C{path} and reopens it on SIGUSR1."""

    _log = Logger()

    def __init__(self, path: str, reactor: Any) -> None:
        self._path = path
        self._reactor = reactor
        self.access_log: AccessLogFile | None = None
        self._previous: Any = None

    @override
    def startService(self) -> None:
        super().startService()
        self.access_log = use_access_log_file(self._path)
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
            use_access_log_file(None)
            self.access_log = None
