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

from relaygate.write_now import write_now

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


class TCPTests(TestCase):
    """On loopback TCP: what is sent at once, and that order is kept when it is not."""

    async def exchange(self, action: Any, expected: int) -> tuple[bytes, list[tuple[int, bool]]]:
        states: list[tuple[int, bool]] = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _Writer(action, states))
        )
        self.addCleanup(port.stopListening)
        client = _Collect(expected)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: client))
        received = await client.done
        assert client.transport is not None
        client.transport.loseConnection()
        return received, states

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
