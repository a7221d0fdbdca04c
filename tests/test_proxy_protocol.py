"""Unit tests for L{relaygate.proxy_protocol}: parsing, trust, the wrapper, outbound headers."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaygate.proxy_protocol import (
    V2_SIGNATURE,
    HeaderError,
    ProxyProtocolFactory,
    ProxyProtocolWrapper,
    TrustedNetworks,
    encode_header,
    parse_header,
    proxy_addresses,
)
from relaygate.routing.router import ProxyAddresses

V1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 2525\r\n"


def v2(source: bytes, destination: bytes, ports: tuple[int, int], family: int = 0x11) -> bytes:
    body = source + destination + struct.pack("!HH", *ports)
    return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(body)) + body


class ParseTests(SynchronousTestCase):
    """L{parse_header} reads v1 and v2 headers and nothing else."""

    def test_v1(self) -> None:
        """A v1 TCP4 line gives both addresses and the bytes after it."""
        parsed = parse_header(V1 + b"EHLO x\r\n")
        assert parsed is not None
        header, rest = parsed
        self.assertEqual(header.source, IPv4Address("TCP", "192.0.2.7", 40001))
        self.assertEqual(header.destination, IPv4Address("TCP", "127.0.0.1", 2525))
        self.assertEqual(rest, b"EHLO x\r\n")

    def test_v1_tcp6(self) -> None:
        """A v1 TCP6 line gives IPv6 addresses."""
        parsed = parse_header(b"PROXY TCP6 2001:db8::1 ::1 5 25\r\n")
        assert parsed is not None
        self.assertEqual(parsed[0].source, IPv6Address("TCP", "2001:db8::1", 5))

    def test_v1_unknown(self) -> None:
        """v1 UNKNOWN carries no addresses."""
        parsed = parse_header(b"PROXY UNKNOWN\r\n")
        assert parsed is not None
        self.assertIsNone(parsed[0].source)

    def test_incomplete_headers_need_more(self) -> None:
        """Any prefix of a valid header asks for more bytes, however TCP split it."""
        for whole in (V1, v2(bytes([192, 0, 2, 7]), bytes([127, 0, 0, 1]), (1, 2))):
            for cut in range(1, len(whole)):
                self.assertIsNone(parse_header(whole[:cut]), (whole, cut))

    def test_v2_ipv4(self) -> None:
        """A v2 PROXY command over TCP/IPv4 gives both addresses."""
        data = v2(bytes([192, 0, 2, 7]), bytes([127, 0, 0, 1]), (40001, 2525)) + b"rest"
        parsed = parse_header(data)
        assert parsed is not None
        self.assertEqual(parsed[0].source, IPv4Address("TCP", "192.0.2.7", 40001))
        self.assertEqual(parsed[1], b"rest")

    def test_v2_ipv6_is_canonical(self) -> None:
        """v2 IPv6 addresses come out in their short canonical text."""
        one = bytes(15) + b"\x01"
        parsed = parse_header(v2(one, one, (1, 2), family=0x21))
        assert parsed is not None
        self.assertEqual(parsed[0].source, IPv6Address("TCP", "::1", 1))

    def test_v2_local(self) -> None:
        """A v2 LOCAL command (health check) carries no addresses."""
        parsed = parse_header(V2_SIGNATURE + b"\x20\x00\x00\x00")
        assert parsed is not None
        self.assertIsNone(parsed[0].source)

    def test_invalid(self) -> None:
        """Anything else is refused with a reason."""
        for data in (
            b"EHLO client\r\n",
            b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 1 65536\r\n",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 1\r\n",
            b"PROXY UDP4 192.0.2.1 127.0.0.1 1 2\r\n",
            b"PROXY " + b"1" * 120,
            V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
            V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),
            V2_SIGNATURE + b"\x21\x11\xff\xff",
            V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),
            V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),
        ):
            with self.assertRaises(HeaderError, msg=repr(data)):
                parse_header(data)


class TrustedNetworksTests(SynchronousTestCase):
    """C{[realip] trusted} matching."""

    def test_match(self) -> None:
        """Addresses in a listed network match; mapped IPv4 too; others and garbage don't."""
        trusted = TrustedNetworks(["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"])
        self.assertIn("127.0.0.1", trusted)
        self.assertIn("10.1.2.3", trusted)
        self.assertIn("::ffff:10.1.2.3", trusted)
        self.assertIn("2001:db8::5", trusted)
        self.assertNotIn("127.0.0.2", trusted)
        self.assertNotIn("not an address", trusted)


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True
        assert self.transport is not None
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[tuple[Any, _Recorder]] = []

    def buildProtocol(self, addr: Any) -> _Recorder:
        protocol = _Recorder()
        self.built.append((addr, protocol))
        return protocol


class WrapperTests(SynchronousTestCase):
    """The inbound wrapper: trust, timeouts, and the addresses the front sees."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = _RecorderFactory()
        self.factory = ProxyProtocolFactory(
            self.inner, TrustedNetworks(["127.0.0.1/32"]), 5.0, self.clock
        )
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def connect(self, peer: str = "127.0.0.1") -> tuple[ProxyProtocolWrapper, StringTransport]:
        wrapper = self.factory.buildProtocol(IPv4Address("TCP", peer, 5000))
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", peer, 5000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 2525),
        )
        wrapper.makeConnection(transport)
        return wrapper, transport

    def test_header_then_front(self) -> None:
        """The front is built after the header, with the client's address, then gets the rest."""
        wrapper, transport = self.connect()
        self.assertEqual(self.inner.built, [])
        self.assertEqual(transport.value(), b"")
        wrapper.dataReceived(V1[:3])
        wrapper.dataReceived(V1[3:] + b"EHLO")
        addr, front = self.inner.built[0]
        self.assertEqual(addr, IPv4Address("TCP", "192.0.2.7", 40001))
        self.assertEqual(transport.value(), b"220 hello\r\n")
        self.assertEqual(front.received, b"EHLO")
        front_transport: Any = front.transport
        self.assertEqual(front_transport.getPeer(), IPv4Address("TCP", "192.0.2.7", 40001))
        self.assertEqual(front_transport.getHost(), IPv4Address("TCP", "127.0.0.1", 2525))
        self.assertEqual(
            proxy_addresses(front_transport),
            ProxyAddresses("192.0.2.7", 40001, "127.0.0.1", 2525),
        )

    def test_untrusted_peer_closed_without_greeting(self) -> None:
        """A connection from outside [realip] trusted is closed at once and logged."""
        _wrapper, transport = self.connect("127.0.0.2")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.events[0]["peer"], "127.0.0.2:5000")
        self.assertIn("untrusted", self.events[0]["why"])

    def test_malformed_header_closed(self) -> None:
        """A client that speaks SMTP instead of PROXY is closed without a greeting."""
        wrapper, transport = self.connect()
        wrapper.dataReceived(b"EHLO client\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.events[0]["why"], "invalid PROXY header")

    def test_missing_header_times_out(self) -> None:
        """No header within header_timeout: closed, logged."""
        _wrapper, transport = self.connect()
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.events[0]["why"], "no PROXY header in time")

    def test_local_keeps_real_addresses(self) -> None:
        """A v2 LOCAL header leaves the connection's own addresses in place."""
        wrapper, _transport = self.connect()
        wrapper.dataReceived(V2_SIGNATURE + b"\x20\x00\x00\x00")
        addr, front = self.inner.built[0]
        self.assertEqual(addr, IPv4Address("TCP", "127.0.0.1", 5000))
        self.assertIsNone(proxy_addresses(front.transport))

    def test_connection_lost_reaches_front(self) -> None:
        """The front hears the connection end; a pending timeout is cancelled."""
        wrapper, _transport = self.connect()
        wrapper.dataReceived(V1)
        _addr, front = self.inner.built[0]
        lost: list[object] = []
        front.connectionLost = lost.append  # type: ignore[method-assign,assignment]
        wrapper.connectionLost()
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class EncodeTests(SynchronousTestCase):
    """Outbound headers read back by the inbound parser."""

    def test_round_trip(self) -> None:
        """v1 and v2 headers for IPv4 and IPv6 parse back to the same addresses."""
        for version in ("v1", "v2"):
            for source, destination in (
                (("192.0.2.7", 40001), ("127.0.0.1", 2525)),
                (("2001:db8::7", 1), ("::1", 25)),
                (("::ffff:192.0.2.7", 3), ("127.0.0.1", 25)),
            ):
                parsed = parse_header(encode_header(version, source, destination))
                assert parsed is not None
                header, rest = parsed
                self.assertEqual(rest, b"")
                assert header.source is not None and header.destination is not None
                self.assertEqual(
                    header.source.host, source[0].removeprefix("::ffff:"), (version, source)
                )
                self.assertEqual(header.destination.port, destination[1])

    def test_exact_v1(self) -> None:
        """The v1 line is exactly as HAProxy writes it."""
        self.assertEqual(
            encode_header("v1", ("192.0.2.7", 40001), ("127.0.0.1", 2525)),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 2525\r\n",
        )

    def test_unknown_addresses(self) -> None:
        """Mixed families give UNKNOWN (v1) and LOCAL (v2)."""
        self.assertEqual(
            encode_header("v1", ("2001:db8::1", 1), ("127.0.0.1", 2)), b"PROXY UNKNOWN\r\n"
        )
        self.assertEqual(
            encode_header("v2", ("2001:db8::1", 1), ("127.0.0.1", 2)),
            V2_SIGNATURE + b"\x20\x00\x00\x00",
        )
