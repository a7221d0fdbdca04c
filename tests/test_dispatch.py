"""Tests for L{relaygate.dispatch}: the epoll reactor's dispatch without the log context."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override

from relaygate.dispatch import lean_dispatch


class _Reader(FileDescriptor):
    """One end of a socket pair, registered for reading; records what happens to it."""

    def __init__(self, reactor: Any, sock: socket.socket, fail: str = "") -> None:
        super().__init__(reactor)
        self.socket = sock
        self.fail = fail
        self.read: list[bytes] = []
        self.lost: list[Failure] = []

    @override
    def fileno(self) -> int:
        return self.socket.fileno()

    @override
    def doRead(self) -> None:
        if self.fail == "read":
            raise RuntimeError("a bug in doRead")
        self.read.append(self.socket.recv(100))

    @override
    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        if self.fail == "read":
            raise RuntimeError("a bug in connectionLost")


class LeanDispatchTests(SynchronousTestCase):
    """An EPollReactor gets the lean C{doPoll}; events still reach their descriptors."""

    def reactor(self) -> EPollReactor:
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertTrue(lean_dispatch(reactor))
        return reactor

    def pair(self, reactor: EPollReactor, fail: str = "") -> tuple[_Reader, socket.socket]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        reader = _Reader(reactor, ours, fail)
        reactor.addReader(reader)
        return reader, theirs

    def test_other_reactors_are_left_alone(self) -> None:
        """Anything but Twisted's epoll reactor keeps its own dispatch."""
        reactor = MemoryReactorClock()
        self.assertFalse(lean_dispatch(reactor))
        self.assertNotIn("doIteration", vars(reactor))

    def test_events_reach_their_descriptor(self) -> None:
        """A readable descriptor's C{doRead} runs in the reactor's iteration, and no log context
        is set up around it."""
        wrapped: list[object] = []
        self.patch(log, "callWithLogger", lambda *a, **k: wrapped.append(a))
        reactor = self.reactor()
        reader, theirs = self.pair(reactor)
        theirs.send(b"EHLO client.test\r\n")
        reactor.doIteration(0)
        self.assertEqual(reader.read, [b"EHLO client.test\r\n"])
        self.assertEqual(reader.lost, [])
        self.assertEqual(wrapped, [])

    def test_failing_handler_is_logged_and_dropped(self) -> None:
        """A C{doRead} that raises, then a C{connectionLost} that raises: both are logged, the
        descriptor is removed, and the iteration goes on to the next descriptor."""
        reactor = self.reactor()
        broken, theirs = self.pair(reactor, fail="read")
        healthy, other = self.pair(reactor)
        theirs.send(b"x")
        other.send(b"QUIT\r\n")
        reactor.doIteration(0)
        self.assertEqual(len(broken.lost), 1)
        self.assertNotIn(broken, reactor.getReaders())
        self.assertEqual(healthy.read, [b"QUIT\r\n"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
