"""Tests for L{relaygate.splice}: relaying, flow control, idle timeout, half-close, the end."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override
from zope.interface import directlyProvides, implementer

from relaygate.connect import RELAY_BUFFER_SIZE
from relaygate.splice import Splice, SpliceEnd


class HalfClosingTransport(StringTransport):
    """A StringTransport that records half-closes."""

    write_closed = False

    def loseWriteConnection(self) -> None:  # noqa: N802
        self.write_closed = True


class SpliceTests(SynchronousTestCase):
    """The splice over two StringTransports and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = HalfClosingTransport()
        self.backend = HalfClosingTransport()
        self.ends: list[SpliceEnd] = []
        self.splice = Splice(self.client, self.backend, self.clock, 60.0, self.ends.append)

    def test_relays_both_ways(self) -> None:
        """Bytes from each side reach the other unchanged, and are counted."""
        self.splice.from_client(b"a FETCH 1 BODY[]\r\n")
        self.splice.from_backend(b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n")
        self.assertEqual(self.backend.value(), b"a FETCH 1 BODY[]\r\n")
        self.assertEqual(self.client.value(), b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n")
        self.assertEqual((self.splice.from_client_bytes, self.splice.from_backend_bytes), (18, 29))

    def test_each_side_produces_for_the_other(self) -> None:
        """A full client buffer pauses reading from the backend, and the reverse."""
        self.assertIs(self.client.producer, self.backend)
        self.assertIs(self.backend.producer, self.client)
        self.assertTrue(self.client.streaming and self.backend.streaming)
        IPushProducer(self.client.producer).pauseProducing()
        self.assertEqual(self.backend.producerState, "paused")
        IPushProducer(self.client.producer).resumeProducing()
        self.assertEqual(self.backend.producerState, "producing")

    def test_idle_timeout(self) -> None:
        """Without traffic for the timeout, both connections are aborted."""
        self.clock.advance(30)
        self.splice.from_backend(b"* OK Still here\r\n")
        self.clock.advance(59)
        self.assertFalse(self.client.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.client.disconnecting and self.backend.disconnecting)
        self.splice.client_lost(Failure(ConnectionDone()))
        self.splice.backend_lost(Failure(ConnectionDone()))
        self.assertEqual(self.ends, [SpliceEnd("idle timeout", 0, 17, 90.0)])

    def test_half_close(self) -> None:
        """A half-close passes through; once both sides are done, both are closed."""
        self.splice.client_eof()
        self.assertTrue(self.backend.write_closed)
        self.assertFalse(self.backend.disconnecting)
        self.splice.backend_eof()
        self.assertFalse(self.client.write_closed)
        self.assertTrue(self.client.disconnecting and self.backend.disconnecting)

    def test_half_close_towards_tls_closes_with_close_notify(self) -> None:
        """Toward a TLS connection a half-close is loseConnection, never a bare FIN."""
        directlyProvides(self.backend, ISSLTransport)
        self.splice.client_eof()
        self.assertFalse(self.backend.write_closed)
        self.assertTrue(self.backend.disconnecting)
        self.assertFalse(self.client.disconnecting)
        self.splice.from_backend(b"+OK bye\r\n")
        self.assertEqual(self.client.value(), b"+OK bye\r\n")

    def test_end_reported_once_both_closed(self) -> None:
        """The end is reported when both are gone, named after the first to go."""
        self.clock.advance(2.5)
        self.splice.backend_lost(Failure(ConnectionDone()))
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.ends, [])
        self.splice.client_lost(Failure(ConnectionDone()))
        self.assertEqual(self.ends, [SpliceEnd("backend closed", 0, 0, 2.5)])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Sink(Protocol):
    """Collects what it receives; tells when it has C{expected} bytes."""

    def __init__(self, expected: int) -> None:
        self.received = bytearray()
        self.expected = expected
        self.done: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(None)


@implementer(IPushProducer)
class _Source:
    """Writes C{data} in 64 KiB pieces as fast as its transport takes it; reports pauses."""

    def __init__(self, transport: object, data: bytes) -> None:
        self.transport = transport
        self.data = memoryview(data)
        self.offset = 0
        self.paused: Deferred[None] = Deferred()
        self.producing = True

    def start(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.producing = False
        if not self.paused.called:
            self.paused.callback(None)

    def resumeProducing(self) -> None:
        self.producing = True
        while self.producing and self.offset < len(self.data):
            self.transport.write(bytes(self.data[self.offset : self.offset + 65536]))  # type: ignore[attr-defined]
            self.offset += 65536

    def stopProducing(self) -> None:
        self.producing = False


class _Gateway(Protocol):
    """The gateway's client leg: feeds the splice."""

    splice: Splice | None = None

    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.splice is not None
        self.splice.from_client(data)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        assert self.splice is not None
        self.splice.client_lost(reason)


class _BackendLeg(Protocol):
    """The gateway's backend leg: feeds the splice."""

    splice: Splice | None = None

    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.splice is not None
        self.splice.from_backend(data)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        assert self.splice is not None
        self.splice.backend_lost(reason)


class SpliceSocketTests(TestCase):
    """Flow control over real loopback sockets."""

    async def test_slow_client_pauses_backend(self) -> None:
        """A client that stops reading stops the gateway reading the backend; nothing is lost."""
        from twisted.internet import reactor

        size = 32 * 1024 * 1024
        payload = os.urandom(1024) * (size // 1024)

        # backend peer: a server that sends the payload when a connection arrives
        backend_side: Deferred[Protocol] = Deferred()

        class Sender(Protocol):
            @override
            def connectionMade(self) -> None:
                backend_side.callback(self)

        backend_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Sender)
        )
        self.addCleanup(backend_port.stopListening)
        gateway_client_leg: Deferred[_Gateway] = Deferred()

        class GatewayFactory(Factory):
            def buildProtocol(self, addr: object) -> _Gateway:
                protocol = _Gateway()
                reactor.callLater(0, gateway_client_leg.callback, protocol)
                return protocol

        gateway_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            GatewayFactory()
        )
        self.addCleanup(gateway_port.stopListening)

        client = _Sink(size)
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", gateway_port.getHost().port), client
        )
        assert client.transport is not None
        client.transport.pauseProducing()  # type: ignore[attr-defined]
        gateway = await gateway_client_leg
        backend_leg = _BackendLeg()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", backend_port.getHost().port), backend_leg
        )
        sender = await backend_side
        ended: Deferred[SpliceEnd] = Deferred()
        splice = Splice(gateway.transport, backend_leg.transport, reactor, 60.0, ended.callback)  # type: ignore[arg-type]
        gateway.splice = splice
        backend_leg.splice = splice

        # Note when the gateway stops reading from the backend: that is the flow control.
        backend_transport = backend_leg.transport
        assert backend_transport is not None
        gateway_paused: Deferred[None] = Deferred()
        pause = backend_transport.pauseProducing  # type: ignore[attr-defined]

        def pause_and_tell() -> None:
            pause()
            if not gateway_paused.called:
                gateway_paused.callback(None)

        backend_transport.pauseProducing = pause_and_tell  # type: ignore[attr-defined]
        source = _Source(sender.transport, payload)
        source.start()
        await gateway_paused.addTimeout(30, reactor)
        gateway_transport: Any = gateway.transport
        buffered = len(gateway_transport.dataBuffer) + sum(
            len(piece) for piece in gateway_transport._tempDataBuffer
        )
        # At most the write buffer's high-water mark plus the one read that crossed it.
        self.assertLessEqual(buffered, 2 * RELAY_BUFFER_SIZE)
        self.assertLess(splice.from_backend_bytes, size)

        client.transport.resumeProducing()  # type: ignore[attr-defined]
        await client.done
        self.assertEqual(len(client.received), size)
        self.assertTrue(bytes(client.received) == payload)
        client.transport.loseConnection()
        end = await ended
        self.assertEqual((end.how, end.from_backend), ("client closed", size))
