"""L{relaygate.wrapping.TransportWrapper}: what it answers for the transport below."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaygate.wrapping import TransportWrapper


class _CountingTransport(StringTransport):
    """A transport that builds a new peer address on every call, as TCP's does."""

    asked = 0

    def getPeer(self) -> IPv4Address:
        self.asked += 1
        return IPv4Address("TCP", "127.0.0.9", 40000 + self.asked)


class PeerTests(SynchronousTestCase):
    """The peer's address is the transport's, asked for once per connection."""

    def test_asked_once(self) -> None:
        """Two calls give the first answer; the transport below is asked once."""
        transport = _CountingTransport()
        wrapper = TransportWrapper()
        wrapper.makeConnection(transport)
        first = wrapper.getPeer()
        self.assertEqual(first, IPv4Address("TCP", "127.0.0.9", 40001))
        self.assertIs(wrapper.getPeer(), first)
        self.assertEqual(transport.asked, 1)

    def test_per_connection(self) -> None:
        """Each wrapper (each connection) asks its own transport."""
        one, two = TransportWrapper(), TransportWrapper()
        one.makeConnection(_CountingTransport())
        two.makeConnection(_CountingTransport())
        self.assertIsNot(one.getPeer(), two.getPeer())
