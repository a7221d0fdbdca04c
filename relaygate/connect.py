"""Outgoing connections: one way to build a client endpoint and tune its TCP socket.

Backends (SMTP, IMAP, POP3) and the auth service are all reached through L{client_endpoint},
on the injected reactor, so IP literals never wait on a resolver thread and PROXY headers and
implicit TLS are layered the same way everywhere.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import cast

from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
    IStreamClientEndpoint,
    ISystemHandle,
    ITCPTransport,
)

from relaygate.addresses import HostPort
from relaygate.proxy_protocol import PreambleEndpoint


def client_endpoint(
    reactor: IReactorTCP,
    target: HostPort,
    timeout: float,
    tls: IOpenSSLClientConnectionCreator | None = None,
    preamble: bytes = b"",
) -> IStreamClientEndpoint:
    """An endpoint for C{target}: plain TCP for an IP literal, name resolution for a host name.

    L{HostnameEndpoint} would resolve even an IP literal through getaddrinfo in the reactor's
    thread pool, a thread round trip per connection. With C{tls}, the connection speaks TLS from
    its first byte (implicit TLS). C{preamble} (a PROXY header) is sent first, below TLS.
    """
    endpoint: IStreamClientEndpoint
    try:
        address = ipaddress.ip_address(target.host)
    except ValueError:
        endpoint = HostnameEndpoint(
            reactor, target.host.encode("idna"), target.port, timeout=timeout
        )
    else:
        if address.version == 6:
            endpoint = TCP6ClientEndpoint(reactor, target.host, target.port, timeout=timeout)
        else:
            endpoint = TCP4ClientEndpoint(reactor, target.host, target.port, timeout=timeout)
    if preamble:
        endpoint = PreambleEndpoint(endpoint, preamble)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    return endpoint


# Read size and write-buffer high-water mark of relayed connections. Twisted's 64 KiB makes a
# 1 MiB message cost ~30 reads, scans and writes and a pause/resume of the client for nearly
# every write; 256 KiB cuts those per-chunk costs while still bounding memory per session.
RELAY_BUFFER_SIZE = 262144
DEFAULT_READ_SIZE = 65536
"""Twisted's own read size (C{FileDescriptor.bufferSize}), for commands and replies."""


def _socket_connection(transport: object) -> FileDescriptor | None:
    """The TCP connection that owns the socket under C{transport}'s wrappers, or None.

    Wrappers (PROXY, limits, operations, TLS) copy ITCPTransport from what they wrap and pass
    setTcpNoDelay down, but an attribute set on them stays there.
    """
    candidate = transport
    for _ in range(8):
        if isinstance(candidate, FileDescriptor):
            return candidate if ITCPTransport.providedBy(candidate) else None
        candidate = getattr(candidate, "transport", None)
    return None


def set_no_delay(transport: object, read_size: int | None = None) -> None:
    """Turn off Nagle's algorithm on the socket under C{transport} (and set its read size).

    Mail commands and their answers are small writes in a request/response rhythm; with Nagle
    and delayed ACKs each would wait for the peer's ACK (nginx's mail proxy stalls this way).

    @param read_size: bytes per read from now on (L{RELAY_BUFFER_SIZE} for a splice).
    """
    connection = _socket_connection(transport)
    if connection is not None:
        ITCPTransport(connection).setTcpNoDelay(True)
        if read_size is not None:
            connection.bufferSize = read_size


def set_read_size(transport: object, size: int) -> None:
    """Read up to C{size} bytes at a time from the socket under C{transport}.

    Each read allocates its full size first, so a 256 KiB read costs small messages about a
    tenth of their CPU (1 KiB x 50: 0.82 against 0.72 ms per message), while a message body
    moves with fewer, larger reads: the SMTP front reads L{RELAY_BUFFER_SIZE} only during DATA.
    """
    connection = _socket_connection(transport)
    if connection is not None:
        connection.bufferSize = size


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def ack_promptly(transport: object) -> None:
    """Take the socket under C{transport} out of the kernel's delayed-ACK ("ping-pong") mode.

    A client with Nagle's algorithm on (Postfix's C{smtp-source}, many MTAs) holds a short
    segment while an earlier short one is unacknowledged, so the end of a message body can wait
    for an ACK. On a connection Linux has seen answer request by request, that ACK waits for the
    delayed-ACK timer: 40 ms, at random, for about one 1 MiB message in five (bench: 1 MiB x 1
    went from 0.7x nginx's rate to 2.3-3.5x, docs/performance.md "The fifth round"). Out of
    that mode the kernel acknowledges a read that empties the socket's buffer at once. Sending
    puts the socket back in the mode, so this is for after the last reply before a body.
    Linux only (C{TCP_QUICKACK}); elsewhere, and on a closed socket, it does nothing.
    """
    connection = _socket_connection(transport)
    if connection is None or _TCP_QUICKACK is None:
        return
    try:
        handle = cast(socket.socket, ISystemHandle(connection).getHandle())
        handle.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:
        pass
