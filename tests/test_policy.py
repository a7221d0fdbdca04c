"""Unit tests for L{relaygate.policy}: each limit hit, and recovered from, on a fake clock."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaygate.config.limits import LimitsConfig
from relaygate.policy import (
    MAX_HELD,
    LimitedConnection,
    LimitedFactory,
    Limits,
    MemoryLimitStore,
    limits_for,
    new_limits,
    refusal,
)


class _SlowStore(MemoryLimitStore):
    """A store that answers C{open_connection} only when the test fires its Deferred."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.pending: list[Deferred[int]] = []

    def open_connection(self, address: str) -> Deferred[int]:
        super().open_connection(address)  # counted at once (a fired Deferred), decided later
        deciding: Deferred[int] = Deferred()
        self.pending.append(deciding)
        return deciding


class _Recorder(Protocol):
    """A front that records what it was given."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class _RecordingFronts(Factory):
    protocol = _Recorder


class _Greeter(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"220 hello\r\n")


class _Fronts(Factory):
    protocol = _Greeter


class LimitedFactoryTests(SynchronousTestCase):
    """Connections through L{LimitedFactory}, as the listeners see them."""

    def make(self, protocol: str = "smtp", **limits: int) -> None:
        self.clock = Clock()
        self.store = MemoryLimitStore(self.clock)
        self.limits = Limits(LimitsConfig(**limits), self.store)
        self.factory = LimitedFactory(_Fronts(), self.limits, protocol, "gw.test")

    def connect(self, ip: str = "192.0.2.1") -> tuple[LimitedConnection, StringTransport]:
        peer = IPv4Address("TCP", ip, 40000)
        wrapper = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        wrapper.makeConnection(transport)
        return wrapper, transport

    def test_concurrent_limit_hit_and_recovered(self) -> None:
        """The third concurrent connection from one address gets 421; after one ends, it's ok."""
        self.make(connections_per_address=2)
        first, first_transport = self.connect()
        self.connect()
        _third, third = self.connect()
        self.assertEqual(first_transport.value(), b"220 hello\r\n")
        self.assertEqual(
            third.value(),
            b"421 4.7.0 gw.test Error: too many connections from your address\r\n",
        )
        self.assertTrue(third.disconnecting)
        _other, other = self.connect("192.0.2.2")
        self.assertEqual(other.value(), b"220 hello\r\n")
        first.connectionLost()
        _fourth, fourth = self.connect()
        self.assertEqual(fourth.value(), b"220 hello\r\n")
        self.assertEqual(self.store.open_counts(), {"192.0.2.1": 2, "192.0.2.2": 1})

    def test_refused_connection_is_not_counted_open(self) -> None:
        """A refused connection's end does not lower the count of the admitted ones."""
        self.make(connections_per_address=1)
        self.connect()
        refused, _ = self.connect()
        refused.connectionLost()
        self.assertEqual(self.store.open_counts(), {"192.0.2.1": 1})

    def test_rate_limit_hit_and_recovered(self) -> None:
        """More than N new connections in a minute are refused until the minute has passed."""
        self.make(connections_per_minute=2)
        for _ in range(2):
            _, transport = self.connect()
            self.assertEqual(transport.value(), b"220 hello\r\n")
            self.clock.advance(10)
        _, refused = self.connect()
        self.assertEqual(
            refused.value(),
            b"421 4.7.0 gw.test Error: too many connections from your address, slow down\r\n",
        )
        self.clock.advance(41)
        _, again = self.connect()
        self.assertEqual(again.value(), b"220 hello\r\n")

    def test_auth_failures_hit_and_recovered(self) -> None:
        """An address with too many failed logins this hour is refused until the hour passes."""
        self.make(auth_failures_per_hour=2)
        wrapper, _ = self.connect()
        front: Any = wrapper.wrapped
        limits = limits_for(front.transport)
        self.assertIs(limits, self.limits)
        self.assertFalse(self.successResultOf(_run(self.limits.auth_failed("192.0.2.1"))))
        self.assertFalse(self.successResultOf(_run(self.limits.auth_blocked("192.0.2.1"))))
        self.clock.advance(1800)
        self.assertTrue(self.successResultOf(_run(self.limits.auth_failed("192.0.2.1"))))
        self.assertTrue(self.successResultOf(_run(self.limits.auth_blocked("192.0.2.1"))))
        _, refused = self.connect()
        self.assertEqual(
            refused.value(),
            b"421 4.7.0 gw.test Error: too many failed logins from your address, "
            b"try again later\r\n",
        )
        self.clock.advance(1801)
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"220 hello\r\n")

    def test_imap_and_pop3_words(self) -> None:
        """IMAP is told with * BYE, POP3 with -ERR."""
        self.assertEqual(refusal("imap", "gw", b"x"), b"* BYE x\r\n")
        self.assertEqual(refusal("pop3", "gw", b"x"), b"-ERR x\r\n")
        self.make("imap", connections_per_address=1)
        self.connect()
        _, refused = self.connect()
        self.assertEqual(refused.value(), b"* BYE too many connections from your address\r\n")

    def test_no_limits_no_wrapper(self) -> None:
        """Without any [limits] key there is nothing to wrap with."""
        self.assertIsNone(new_limits(LimitsConfig(), Clock()))
        self.assertIsNotNone(new_limits(LimitsConfig(connections_per_minute=1), Clock()))


class SlowStoreTests(SynchronousTestCase):
    """A store that takes its time (a networked one): the early bytes stay bounded."""

    def setUp(self) -> None:
        self.store = _SlowStore(Clock())
        limits = Limits(LimitsConfig(connections_per_address=1), self.store)
        self.factory = LimitedFactory(_RecordingFronts(), limits, "smtp", "gw.test")
        peer = IPv4Address("TCP", "192.0.2.1", 40000)
        self.wrapper = self.factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.wrapper.makeConnection(self.transport)

    def test_reading_paused_while_the_store_decides(self) -> None:
        """No more is read while the store decides; then the front gets the held bytes."""
        self.assertEqual(self.transport.producerState, "paused")
        self.wrapper.dataReceived(b"EHLO client\r\n")
        self.assertIsNone(self.wrapper.wrapped)
        self.store.pending[0].callback(1)
        self.assertEqual(self.transport.producerState, "producing")
        front = self.wrapper.wrapped
        assert isinstance(front, _Recorder)
        self.assertEqual(front.received, [b"EHLO client\r\n"])

    def test_refused_connection_resumed_and_closed(self) -> None:
        """A refusal is written and the connection closed; nothing is left paused."""
        self.store.pending[0].callback(2)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(
            self.transport.value(),
            b"421 4.7.0 gw.test Error: too many connections from your address\r\n",
        )
        self.assertTrue(self.transport.disconnecting)

    def test_early_bytes_past_the_bound_close_the_connection(self) -> None:
        """A transport that reads on regardless is aborted past L{MAX_HELD}, not buffered."""
        self.wrapper.dataReceived(b"x" * MAX_HELD)
        self.assertFalse(self.transport.disconnecting)
        self.wrapper.dataReceived(b"x")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.wrapper._held, b"")
        self.wrapper.dataReceived(b"y" * 10)
        self.assertEqual(self.wrapper._held, b"")
        self.store.pending[0].callback(1)
        self.assertIsNone(self.wrapper.wrapped)
        self.assertEqual(self.store.open_counts(), {})


class MemoryStoreTests(SynchronousTestCase):
    """The in-memory store forgets old events."""

    def test_window_slides(self) -> None:
        """Events older than the window no longer count; an address with none is forgotten."""
        clock = Clock()
        store = MemoryLimitStore(clock)
        self.assertEqual(self.successResultOf(store.add_event("k", "a", 60)), 1)
        clock.advance(30)
        self.assertEqual(self.successResultOf(store.add_event("k", "a", 60)), 2)
        clock.advance(31)
        self.assertEqual(self.successResultOf(store.count_events("k", "a", 60)), 1)
        clock.advance(30)
        self.assertEqual(self.successResultOf(store.count_events("k", "a", 60)), 0)
        self.assertEqual(store._events, {})


def _run(coroutine: Coroutine[Any, Any, bool]) -> Deferred[bool]:
    return Deferred.fromCoroutine(coroutine)
