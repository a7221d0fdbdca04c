"""Writes that skip Twisted's epoll round trip: at once (body chunks) or at the turn's end.

Twisted's L{FileDescriptor.write} always buffers: it registers the socket for writing
(C{epoll_ctl} MOD), and on the reactor's next turn C{doWrite} sends and unregisters it
(another C{epoll_ctl}), a dispatch through the reactor around every write. Twisted has no
option to send without that, so this module does it by hand where it is equivalent: a plain
TCP connection, connected and not closing, with nothing Twisted is already sending. Whatever
the kernel does not take, and every write on any other transport (TLS, a test's
L{StringTransport}), goes through C{transport.write}, so ordering, producers and close keep
Twisted's semantics.

L{write_now} sends before it returns: it pays for DATA body chunks (1 MiB x 50: about 13 %
less CPU per message). For small replies and commands it cost about 10 % at 1 KiB x 50, since
each send wakes its peer at once; L{write_soon} keeps them to the end of the reactor's turn,
as Twisted does, and sends them all from one call (docs/performance.md).
"""

from __future__ import annotations

from errno import EAGAIN, EINTR, ENOBUFS, EWOULDBLOCK
from typing import Any

from twisted.internet import tcp

_TRY_AGAIN = frozenset((EAGAIN, EWOULDBLOCK, ENOBUFS, EINTR))


def write_now(transport: Any, data: bytes) -> None:
    """Write C{data} to C{transport}, sending it right away when that is safe (see above)."""
    if (
        type(transport) in _PLAIN_TCP
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and len(transport.dataBuffer) <= transport.offset
        and data
    ):
        try:
            sent = transport.socket.send(data)
        except OSError as e:
            if e.errno not in _TRY_AGAIN:
                # Twisted's own write path meets the same error and closes as it always does.
                transport.write(data)
                return
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
        return
    transport.write(data)


def write_soon(transport: Any, data: bytes) -> None:
    """Write C{data} to C{transport}; on a plain TCP connection, send it at the end of this turn.

    The bytes go where Twisted's own C{write} puts them (the transport's list buffer), but the
    socket is not registered for writing: one call at the end of the reactor's turn sends
    every connection's bytes (L{_TurnSends}). That keeps what Twisted's next-turn send is good
    for (one reactor pass answers many sessions before any peer wakes) and drops what it costs
    per write, an C{epoll_ctl} MOD before and after and a dispatch. Measured in
    docs/performance.md ("The third round").

    Anything that would make the difference visible goes through C{transport.write} instead:
    another transport (TLS, a test's), a connection that is closing or half-closed, bytes
    Twisted is already sending, or a producer Twisted must resume. A wrapper's transport
    (L{relaygate.wrapping.TransportWrapper}) calls this with the transport below it.
    """
    if (
        type(transport) in _PLAIN_TCP
        and data
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and len(transport.dataBuffer) <= transport.offset
        and (transport.producer is None or transport.streamingProducer)
        and not transport.producerPaused
    ):
        transport._tempDataBuffer.append(data)
        transport._tempDataLen += len(data)
        _turn_sends(transport.reactor).add(transport)
        return
    transport.write(data)


class _TurnSends:
    """The connections with bytes from L{write_soon}, sent by one call at the end of the turn.

    The call is a C{callLater(0)} made by the turn's first write: the reactor runs it before
    it next waits for events, so it is one timed call per turn, not per write.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pending: dict[Any, None] = {}
        self._call: Any = None

    def add(self, transport: Any) -> None:
        self._pending[transport] = None
        if self._call is None:
            self._call = self._reactor.callLater(0, self._send)

    def _send(self) -> None:
        self._call = None
        pending, self._pending = self._pending, {}
        for transport in pending:
            # Closing, half-closed, or partly sent: Twisted registered the socket for writing
            # and its doWrite sends these bytes in order. Lost: Twisted would drop them too.
            if (
                not transport._tempDataLen
                or not transport.connected
                or transport.disconnecting
                or transport._writeDisconnecting
                or len(transport.dataBuffer) > transport.offset
            ):
                continue
            data = b"".join(transport._tempDataBuffer)
            transport._tempDataBuffer = []
            transport._tempDataLen = 0
            write_now(transport, data)


_SENDS: dict[Any, _TurnSends] = {}


def _turn_sends(reactor: Any) -> _TurnSends:
    """The one L{_TurnSends} of C{reactor} (a process runs one reactor; tests may run more)."""
    sends = _SENDS.get(reactor)
    if sends is None:
        sends = _SENDS[reactor] = _TurnSends(reactor)
    return sends


# The transports Twisted's TCP endpoints give protocols; subclasses could override write.
_PLAIN_TCP = frozenset((tcp.Server, tcp.Client))
