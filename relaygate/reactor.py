"""The reactor relaygate runs on, typed as the interfaces it is used through.

Functions that need one interface take that interface (C{IReactorTCP}, C{IReactorTime}). Where
the reactor is handed on to everything a process builds (C{tap}, C{service}, C{workers}) it is
one of the intersections below, as treq types its reactor (C{treq/_types.py},
C{_ITreqReactor}). Twisted's reactors provide every interface named here; mypy-zope cannot tell
that an object declared with the separate interfaces provides their intersection, so the one
place the global reactor enters names it once (C{tap.makeService}, C{workers.main}), and tests
that pass a C{MemoryReactorClock} say so with a C{cast}.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
)


class IGatewayReactor(
    IReactorTCP, IReactorTime, IReactorFromThreads, IReactorPluggableNameResolver
):
    """What one process's service tree uses: TCP listeners and backend connections, timers,
    the hop out of a signal handler (C{callFromThread}), and name resolution for the auth
    service's HTTP agent."""


class IParentReactor(IGatewayReactor, IReactorProcess):
    """The parent of C{[server] workers} children: the gateway's reactor that also spawns them."""


class IWorkerReactor(IGatewayReactor, IReactorSocket, IReactorCore):
    """A worker child: the gateway's reactor that adopts the parent's sockets and runs itself."""
