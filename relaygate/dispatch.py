"""The epoll reactor's event dispatch without the legacy log context around each event.

Twisted's C{EPollReactor.doPoll} calls each ready descriptor through C{log.callWithLogger},
which asks the descriptor for its log prefix and pushes two copied context dictionaries, only
so that a legacy C{twisted.python.log.msg} made while handling the event carries a C{system}
prefix. relaygate logs through C{twisted.logger.Logger}, which does not read that context, and
the per-event bookkeeping is a measurable share of a small message's CPU (docs/performance.md,
"The third round"). L{lean_dispatch} gives one reactor a C{doPoll} that is Twisted's own minus
that wrapper; errors are still caught and logged (C{_doReadOrWrite} logs a handler's failure
and disconnects the descriptor, as before).
"""

from __future__ import annotations

import errno
from types import MethodType
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

_log = Logger()


def lean_dispatch(reactor: object) -> bool:
    """Give C{reactor} the lean C{doPoll} if it is Twisted's epoll reactor; say whether it did."""
    if type(reactor) is not EPollReactor:
        return False
    poll = MethodType(_do_poll, reactor)
    reactor.doPoll = reactor.doIteration = poll  # type: ignore[method-assign]
    return True


def _do_poll(self: Any, timeout: float | None) -> None:
    """C{EPollReactor.doPoll}, dispatching each event without C{callWithLogger}."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is not None:
            try:
                handle(selectable, fd, event)
            except Exception:
                # What callWithLogger caught: a connectionLost that raised while disconnecting.
                _log.failure("error handling an event on {selectable!r}", selectable=selectable)
