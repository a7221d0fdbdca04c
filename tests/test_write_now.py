"""Tests for L{relaygate.write_now}: a send at once on an idle TCP connection, else Twisted's."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override

from relaygate.write_now import write_now, write_soon

reactor: Any = global_reactor


class OtherTransportTests(SynchronousTestCase):
    """Anything but a plain TCP connection gets an ordinary write."""

    def test_string_transport(self) -> None:
        """A test transport receives the bytes through write()."""
        transport = StringTransport()
        write_now(transport, b"250 2.0.0 Ok\r\n")
        self.assertEqual(transport.value(), b"250 2.0.0 Ok\r\n")


class _Collect(Protocol):
    """The client side: gathers bytes until C{expected} have arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(self.received)


class _Writer(Protocol):
    """The server side: runs C{action} on connect and records the transport's state after."""

    def __init__(self, action: Any, states: list[tuple[int, bool]]) -> None:
        self.action = action
        self.states = states

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.action(self.transport)
        transport: Any = self.transport
        self.states.append((transport._tempDataLen, transport in reactor.getWriters()))


class _Loopback(TestCase):
    """A server on loopback TCP that runs an action on connect, and a client that reads."""

    async def serve(self, action: Any, client: Protocol) -> list[tuple[int, bool]]:
        """Connect C{client} to a server running C{action}; the server's states after it."""
        states: list[tuple[int, bool]] = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _Writer(action, states))
        )
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: client))
        return states

    async def exchange(self, action: Any, expected: int) -> tuple[bytes, list[tuple[int, bool]]]:
        """The first C{expected} bytes the client receives, and the server's states."""
        client = _Collect(expected)
        states = await self.serve(action, client)
        received = await client.done
        assert client.transport is not None
        client.transport.loseConnection()
        return received, states


class TCPTests(_Loopback):
    """On loopback TCP: what is sent at once, and that order is kept when it is not."""

    async def test_idle_connection_sends_at_once(self) -> None:
        """Nothing is buffered and the socket is not registered for writing."""
        received, states = await self.exchange(lambda t: write_now(t, b"220 ready\r\n"), 11)
        self.assertEqual(received, b"220 ready\r\n")
        self.assertEqual(states, [(0, False)])

    async def test_queued_bytes_keep_their_order(self) -> None:
        """Behind a buffered write, the new bytes are buffered too, after it."""

        def action(transport: Any) -> None:
            transport.write(b"first ")
            write_now(transport, b"second")

        received, states = await self.exchange(action, 12)
        self.assertEqual(received, b"first second")
        self.assertEqual(states, [(12, True)])

    async def test_closing_connection_is_left_to_twisted(self) -> None:
        """After loseConnection, a write is Twisted's: buffered and sent before the close."""

        def action(transport: Any) -> None:
            write_now(transport, b"bye\r\n")
            transport.loseConnection()
            write_now(transport, b"late\r\n")

        received, states = await self.exchange(action, 11)
        self.assertEqual(received, b"bye\r\nlate\r\n")
        self.assertEqual(states, [(6, True)])


class _Silent(Protocol):
    """A client that reads nothing until told to, so the server's sends fill the socket."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @override
    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(self.received)


class TurnTests(_Loopback):
    """L{write_soon} on loopback TCP: bytes wait for the turn's end, in order, unregistered."""

    async def test_writes_wait_for_the_end_of_the_turn(self) -> None:
        """Two writes of one turn are held in the transport's buffer, unregistered, then sent."""

        def action(transport: Any) -> None:
            write_soon(transport, b"250-first\r\n")
            write_soon(transport, b"250 second\r\n")

        received, states = await self.exchange(action, 23)
        self.assertEqual(received, b"250-first\r\n250 second\r\n")
        self.assertEqual(states, [(23, False)])

    async def test_twisted_write_between_keeps_the_order(self) -> None:
        """A C{transport.write} after a held write goes behind it, and so does the next one."""

        def action(transport: Any) -> None:
            write_soon(transport, b"one ")
            transport.write(b"two ")
            write_soon(transport, b"three")

        received, states = await self.exchange(action, 13)
        self.assertEqual(received, b"one two three")
        self.assertEqual(states, [(13, True)])

    async def test_close_sends_held_bytes_first(self) -> None:
        """loseConnection right after a held write: the bytes arrive, then the close."""

        def action(transport: Any) -> None:
            write_soon(transport, b"221 bye\r\n")
            transport.loseConnection()
            write_soon(transport, b"late\r\n")

        client = _Silent()
        await self.serve(action, client)
        assert client.transport is not None
        client.transport.resumeProducing()  # type: ignore[attr-defined]
        self.assertEqual(await client.closed, b"221 bye\r\nlate\r\n")

    async def test_what_the_kernel_refuses_goes_to_twisted(self) -> None:
        """More than the socket takes: the rest is Twisted's buffered write, all in order."""
        big = bytes(range(256)) * 32768  # 8 MiB, more than loopback buffers hold

        def action(transport: Any) -> None:
            write_soon(transport, big)
            write_soon(transport, b"end")
            reactor.callLater(0, transport.loseConnection)

        client = _Silent()
        await self.serve(action, client)
        assert client.transport is not None
        client.transport.resumeProducing()  # type: ignore[attr-defined]
        received = await client.closed
        self.assertEqual(len(received), len(big) + 3)
        self.assertTrue(received == big + b"end")

    async def test_paused_producer_gets_twisted_write(self) -> None:
        """With a paused producer on the transport, Twisted's write path (it resumes it)."""

        def action(transport: Any) -> None:
            transport.registerProducer(_Producer(), True)
            transport.producerPaused = True
            write_soon(transport, b"hello")

        received, states = await self.exchange(action, 5)
        self.assertEqual(received, b"hello")
        self.assertEqual(states, [(5, True)])

    def test_other_transports_write_at_once(self) -> None:
        """A test's transport (or TLS) gets C{write} at once."""
        transport = StringTransport()
        write_soon(transport, b"220 ready\r\n")
        self.assertEqual(transport.value(), b"220 ready\r\n")


class _Producer:
    """A streaming producer that only records what it was told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")
