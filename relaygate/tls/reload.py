"""Reloading certificates on SIGHUP."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from typing_extensions import override


class ReloadOnSIGHUP(Service):
    """Call C{reload} when the process gets SIGHUP, while the service runs.

    The signal handler only schedules the reload with C{callFromThread}, the reactor-safe way
    to leave a signal handler (it wakes the reactor, as Twisted's own SIGINT handler does).
    """

    _log = Logger()

    def __init__(
        self,
        reload: Callable[[], object],
        reactor: IReactorFromThreads,
        install: Callable[[int, Any], Any] = signal.signal,
    ) -> None:
        """@param install: C{signal.signal}, or a stand-in for tests."""
        self._reload = reload
        self._reactor = reactor
        self._install = install
        self._previous: Any = None

    @override
    def startService(self) -> None:
        super().startService()
        self._previous = self._install(signal.SIGHUP, self._on_signal)

    @override
    def stopService(self) -> None:
        super().stopService()
        previous = self._previous if self._previous is not None else signal.SIG_DFL
        self._install(signal.SIGHUP, previous)
        self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._reload_now)

    def _reload_now(self) -> None:
        self._log.info("SIGHUP: reloading certificates")
        try:
            self._reload()
        except Exception:
            self._log.failure("while reloading certificates")
