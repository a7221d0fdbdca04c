"""The process's life: SIGTERM drains, SIGINT or a second SIGTERM stops, SIGHUP reloads
(and, in the parent of workers, SIGUSR1 is passed on so each reopens its access log).

L{SwitchFactory} lets a listening port keep its socket while a reload swaps the front factory
behind it, so no connection is refused and every session keeps the factory (and so the
configuration) it was built by. L{SignalHandlers} takes SIGTERM, SIGINT and SIGHUP over from
the reactor once it runs (twistd installs its own handlers when the reactor starts, so ours
must come after) and gives them back when the service stops.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from typing_extensions import override


class SwitchFactory(Factory):
    """A listener's factory that hands each new connection to the current front factory."""

    noisy = False

    def __init__(self, current: IProtocolFactory) -> None:
        self.wrapped_factory = current
        self._started = False

    def switch(self, new: IProtocolFactory) -> None:
        """New connections go to C{new} from now on; connections already made keep theirs."""
        old, self.wrapped_factory = self.wrapped_factory, new
        if self._started:
            new.doStart()
            old.doStop()

    @override
    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        return self.wrapped_factory.buildProtocol(addr)

    @override
    def doStart(self) -> None:
        self._started = True
        self.wrapped_factory.doStart()

    @override
    def doStop(self) -> None:
        self._started = False
        self.wrapped_factory.doStop()


class SignalHandlers(Service):
    """Route SIGTERM, SIGINT and SIGHUP to callbacks in the reactor's thread while running.

    @param reactor: provides C{callWhenRunning} and C{callFromThread}.
    @param install: C{signal.signal}, or a stand-in for tests.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        on_term: Callable[[], object],
        on_int: Callable[[], object],
        on_hup: Callable[[], object] | None,
        install: Callable[[int, Any], Any] = signal.signal,
        on_usr1: Callable[[], object] | None = None,
    ) -> None:
        self._reactor = reactor
        self._handlers: dict[int, Callable[[], object]] = {
            signal.SIGTERM: on_term,
            signal.SIGINT: on_int,
        }
        if on_hup is not None:
            self._handlers[signal.SIGHUP] = on_hup
        if on_usr1 is not None:
            self._handlers[signal.SIGUSR1] = on_usr1
        self._install = install
        self._previous: dict[int, Any] = {}

    @override
    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._take_over)

    def _take_over(self) -> None:
        if not self.running:
            return
        for number in self._handlers:
            self._previous[number] = self._install(number, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Leave the signal handler at once; the work runs in the reactor's next turn.
        self._reactor.callFromThread(self._dispatch, signum)
        previous = self._previous.get(signum)
        if signum == signal.SIGUSR1 and callable(previous):
            # twistd rotates its own log file on SIGUSR1: keep doing that.
            previous(signum, frame)

    def _dispatch(self, signum: int) -> None:
        try:
            self._handlers[signum]()
        except Exception:
            self._log.failure("handling signal {signal}", signal=signal.Signals(signum).name)

    @override
    def stopService(self) -> None:
        super().stopService()
        for number, previous in self._previous.items():
            self._install(number, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
