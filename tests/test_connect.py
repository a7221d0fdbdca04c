"""Tests for L{relaygate.connect.set_no_delay}: the socket under any wrappers gets the settings."""

from __future__ import annotations

import socket

from twisted.internet import reactor, tcp
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from relaygate.connect import RELAY_BUFFER_SIZE, set_no_delay


class _Wrapper:
    """Stands in for a PROXY, limits, operations or TLS layer: it only knows its transport."""

    def __init__(self, transport: object) -> None:
        self.transport = transport


class SetNoDelayTests(SynchronousTestCase):
    """Nagle off and the relay's read size, on the connection that owns the socket."""

    def connection(self) -> tuple[tcp.Connection, socket.socket]:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        server, _ = listener.accept()
        self.addCleanup(server.close)
        return tcp.Connection(server, Protocol(), reactor), server

    def test_through_wrappers(self) -> None:
        """Three wrappers deep, the TCP connection itself reads 256 KiB and has TCP_NODELAY."""
        connection, sock = self.connection()
        wrapper = _Wrapper(_Wrapper(_Wrapper(connection)))
        set_no_delay(wrapper)
        self.assertEqual(connection.bufferSize, RELAY_BUFFER_SIZE)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        self.assertFalse(hasattr(wrapper, "bufferSize"))

    def test_connection_itself(self) -> None:
        """Given the connection directly, it is set the same way."""
        connection, sock = self.connection()
        set_no_delay(connection)
        self.assertEqual(connection.bufferSize, RELAY_BUFFER_SIZE)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_not_tcp_is_left_alone(self) -> None:
        """A transport with no socket under it (a test's StringTransport) is not touched."""
        wrapper = _Wrapper(object())
        set_no_delay(wrapper)
        self.assertFalse(hasattr(wrapper, "bufferSize"))
