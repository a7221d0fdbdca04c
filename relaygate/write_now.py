"""Send a write at once when nothing is queued, instead of on the reactor's next turn.

Twisted's L{FileDescriptor.write} always buffers: it registers the socket for writing
(C{epoll_ctl} ADD), and on the reactor's next turn C{doWrite} sends and unregisters it
(C{epoll_ctl} DEL). Twisted has no option to try the send first, so this does it by hand for
the one case where it is equivalent: a plain TCP connection, connected and not closing, with
nothing buffered. Whatever the kernel does not take at once, and every write on any other
transport (TLS, a wrapping protocol, a test's L{StringTransport}), goes through
C{transport.write} as before, so ordering, producers and close all keep Twisted's semantics.

Measured (docs/performance.md): it pays for DATA body chunks (1 MiB x 50: about 13 % less CPU
per message), and costs for small replies and commands (1 KiB x 50: about 10 % more), where
Twisted's next-turn send lets one reactor pass serve many sessions; so only the body relay
uses it.
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


# The transports Twisted's TCP endpoints give protocols; subclasses could override write.
_PLAIN_TCP = frozenset((tcp.Server, tcp.Client))
