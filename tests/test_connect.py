"""Tests for L{relaygate.connect}: the socket under any wrappers gets the relay's settings."""

from __future__ import annotations

import socket

from twisted.internet import reactor, tcp
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from relaygate.connect import (
    DEFAULT_READ_SIZE,
    RELAY_BUFFER_SIZE,
    ack_promptly,
    set_no_delay,
    set_read_size,
)


class _Wrapper:
    """Stands in for a PROXY, limits, operations or TLS layer: it only knows its transport."""

    def __init__(self, transport: object) -> None:
        self.transport = transport


class SocketSettingsTests(SynchronousTestCase):
    """Nagle off and the read size, on the connection that owns the socket."""

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        """A connected loopback pair: the client's socket and the server's."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        server, _ = listener.accept()
        self.addCleanup(server.close)
        return client, server

    def connection(self) -> tuple[tcp.Connection, socket.socket]:
        _, server = self.sockets()
        return tcp.Connection(server, Protocol(), reactor), server

    def test_no_delay_through_wrappers(self) -> None:
        """Three wrappers deep: TCP_NODELAY on the socket, and Twisted's read size kept."""
        connection, sock = self.connection()
        set_no_delay(_Wrapper(_Wrapper(_Wrapper(connection))))
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        self.assertEqual(connection.bufferSize, DEFAULT_READ_SIZE)

    def test_no_delay_with_read_size(self) -> None:
        """A splice asks for the relay's read size with TCP_NODELAY."""
        connection, sock = self.connection()
        wrapper = _Wrapper(connection)
        set_no_delay(wrapper, RELAY_BUFFER_SIZE)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        self.assertEqual(connection.bufferSize, RELAY_BUFFER_SIZE)
        self.assertFalse(hasattr(wrapper, "bufferSize"))

    def test_read_size_through_wrappers(self) -> None:
        """The read size lands on the socket's connection, not on a wrapper, and goes back."""
        connection, _ = self.connection()
        wrapper = _Wrapper(_Wrapper(connection))
        set_read_size(wrapper, RELAY_BUFFER_SIZE)
        self.assertEqual(connection.bufferSize, RELAY_BUFFER_SIZE)
        self.assertFalse(hasattr(wrapper, "bufferSize"))
        set_read_size(wrapper, DEFAULT_READ_SIZE)
        self.assertEqual(connection.bufferSize, DEFAULT_READ_SIZE)

    def test_ack_promptly_leaves_delayed_ack_mode(self) -> None:
        """After request/response rounds the kernel delays its ACKs on the socket (Linux reports
        it as C{TCP_QUICKACK} 0); L{ack_promptly}, through wrappers, takes it out of that mode."""
        quickack = getattr(socket, "TCP_QUICKACK", None)
        if quickack is None:
            raise SkipTest("TCP_QUICKACK is Linux's")
        client, server = self.sockets()
        for _ in range(4):
            client.sendall(b"NOOP\r\n")
            self.assertEqual(server.recv(64), b"NOOP\r\n")
            server.sendall(b"250 2.0.0 Ok\r\n")
            self.assertEqual(client.recv(64), b"250 2.0.0 Ok\r\n")
        if server.getsockopt(socket.IPPROTO_TCP, quickack) != 0:
            raise SkipTest("this kernel did not judge the exchange interactive")
        ack_promptly(_Wrapper(_Wrapper(tcp.Connection(server, Protocol(), reactor))))
        self.assertEqual(server.getsockopt(socket.IPPROTO_TCP, quickack), 1)

    def test_ack_promptly_on_a_closed_socket(self) -> None:
        """A connection whose socket is already closed is left as it is, without an error."""
        connection, sock = self.connection()
        sock.close()
        ack_promptly(connection)

    def test_not_tcp_is_left_alone(self) -> None:
        """A transport with no socket under it (a test's StringTransport) is not touched."""
        wrapper = _Wrapper(object())
        set_no_delay(wrapper, RELAY_BUFFER_SIZE)
        set_read_size(wrapper, RELAY_BUFFER_SIZE)
        ack_promptly(wrapper)
        self.assertFalse(hasattr(wrapper, "bufferSize"))
