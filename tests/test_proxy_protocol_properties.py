"""Property tests for L{relaygate.proxy_protocol}: any bytes are a header, "need more" or a
L{HeaderError}; a header split anywhere reads as the whole; what we encode we read back."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override

from relaygate.proxy_protocol import (
    V2_SIGNATURE,
    HeaderError,
    ProxyHeader,
    ProxyProtocolFactory,
    TrustedNetworks,
    encode_header,
    parse_header,
)
from tests import properties  # noqa: F401 (loads the Hypothesis profile)


def _v6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(text)


_ipv4 = st.ip_addresses(v=4).map(str)
# IPv4-mapped IPv6 addresses are sent in their IPv4 form (encode_header), so leave them out.
_ipv6 = st.ip_addresses(v=6).map(str).filter(lambda ip: _v6(ip).ipv4_mapped is None)
_ports = st.integers(min_value=0, max_value=65535)
_pairs = st.one_of(
    st.tuples(st.tuples(_ipv4, _ports), st.tuples(_ipv4, _ports)),
    st.tuples(st.tuples(_ipv6, _ports), st.tuples(_ipv6, _ports)),
)


@st.composite
def _v2_headers(draw: st.DrawFn) -> bytes:
    """Valid v2 headers: PROXY or LOCAL, IPv4, IPv6 or UNSPEC, TCP or UNSPEC, with TLVs."""
    command = draw(st.sampled_from([0x20, 0x21]))
    family = draw(st.sampled_from([0x00, 0x10, 0x20]))
    transport = draw(st.sampled_from([0x00, 0x01])) if family else 0x00
    size = {0x00: 0, 0x10: 12, 0x20: 36}[family]
    body = draw(st.binary(min_size=size, max_size=size)) + draw(st.binary(max_size=64))
    return (
        V2_SIGNATURE + bytes((command, family | transport)) + struct.pack("!H", len(body)) + body
    )


_headers = st.one_of(
    st.tuples(st.sampled_from(["v1", "v2"]), _pairs).map(lambda t: encode_header(t[0], *t[1])),
    st.sampled_from([b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ignored words\r\n"]),
    _v2_headers(),
)
_garbage = st.binary(max_size=200) | st.lists(
    st.sampled_from(
        [
            b"PROXY ",
            b"TCP4 ",
            b"TCP6 ",
            b"UNKNOWN",
            b"1.2.3.4 ",
            b"::1 ",
            b"65535 ",
            b"0 ",
            b"\r\n",
            b"\r",
            b"fe80::1%eth0 ",
            V2_SIGNATURE,
            b"\x21\x11\x00\x0c",
            b"\x21\x21\x00\x24",
            b"\x00",
        ]
    ),
    max_size=12,
).map(b"".join)

# v1 lines made of plausible fields, valid or nearly so.
_v1_addresses = st.one_of(
    _ipv4.map(str.encode),
    _ipv6.map(str.encode),
    st.sampled_from([b"fe80::1%eth0", b"::1%1", b"999.0.0.1", b"01.2.3.4", b""]),
)
_v1_ports = st.one_of(
    _ports.map(b"%d".__mod__),
    st.integers(0, 9).map(b"%d".__mod__),
    st.sampled_from([b"01", b"65536", b"-1", b"1a", b""]),
)
_v1_lines = st.builds(
    lambda family, addresses, ports: b" ".join([b"PROXY", family, *addresses, *ports]) + b"\r\n",
    st.sampled_from([b"TCP4", b"TCP6", b"TCP6", b"UNKNOWN"]),
    st.lists(_v1_addresses, min_size=2, max_size=2),
    st.lists(_v1_ports, min_size=2, max_size=2),
)


def _feed(chunks: list[bytes]) -> tuple[ProxyHeader, bytes] | None:
    """Read a header as the wrapper does: parse all bytes so far after each read."""
    buffered = b""
    for number, chunk in enumerate(chunks):
        buffered += chunk
        parsed = parse_header(buffered)
        if parsed is not None:
            header, rest = parsed
            return header, rest + b"".join(chunks[number + 1 :])
    return None


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


class ParseAnythingTests(SynchronousTestCase):
    """Any bytes at all."""

    @given(
        _garbage
        | _v1_lines
        | _headers.flatmap(lambda h: st.binary(max_size=len(h)).map(lambda b: h + b))
    )
    def test_never_raises_anything_else(self, data: bytes) -> None:
        """parse_header returns a header, C{None} or raises L{HeaderError}, nothing else."""
        try:
            parsed = parse_header(data)
        except HeaderError:
            return
        if parsed is not None:
            header, rest = parsed
            self.assertIn(header.version, (1, 2))
            self.assertTrue(data.endswith(rest))
            for address in (header.source, header.destination):
                if address is not None:
                    # A plain, canonical IP address: no scope, nothing else for the logs.
                    self.assertEqual(str(ipaddress.ip_address(address.host)), address.host)
                    self.assertNotIn("%", address.host)

    @given(_v1_lines)
    def test_v1_addresses_are_plain(self, line: bytes) -> None:
        """A v1 line is refused, or gives plain canonical addresses (no IPv6 scope) and ports."""
        try:
            parsed = parse_header(line)
        except HeaderError:
            return
        assert parsed is not None
        header, rest = parsed
        self.assertEqual(rest, b"")
        for address in (header.source, header.destination):
            if address is not None:
                self.assertEqual(str(ipaddress.ip_address(address.host)), address.host)
                self.assertNotIn("%", address.host)
                self.assertIn(str(address.port).encode(), line[:-2].split(b" ")[-2:])

    @given(_garbage.flatmap(lambda d: st.tuples(st.just(d), st.integers(0, len(d)))))
    def test_need_more_only_on_a_prefix(self, case: tuple[bytes, int]) -> None:
        """A refused input is refused whatever follows; "need more" means a prefix of one."""
        data, end = case
        try:
            parsed = parse_header(data[:end])
        except HeaderError:
            self.assertRaises(HeaderError, parse_header, data)
            return
        if parsed is not None:
            self.assertEqual(parse_header(data), (parsed[0], parsed[1] + data[end:]))


class SplitTests(SynchronousTestCase):
    """A valid header however TCP splits it."""

    @given(_headers, st.binary(max_size=40), st.lists(st.integers(0, 200), max_size=6))
    def test_any_split_reads_as_the_whole(
        self, header: bytes, after: bytes, cuts: list[int]
    ) -> None:
        """Reading the header in any pieces gives the same header and the same bytes after it."""
        data = header + after
        whole = parse_header(data)
        assert whole is not None
        self.assertEqual(whole[1], after)
        self.assertEqual(_feed(_splits(data, cuts)), whole)
        for end in range(len(header)):
            self.assertIsNone(parse_header(header[:end]), header[:end])


class _Front(Protocol):
    """Records what reaches the front."""

    def __init__(self) -> None:
        self.received = b""

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _Fronts(Factory):
    """Builds L{_Front}s and remembers each with the address it was built for."""

    def __init__(self) -> None:
        self.built: list[tuple[IAddress | None, _Front]] = []

    @override
    def buildProtocol(self, addr: IAddress | None) -> _Front:
        front = _Front()
        self.built.append((addr, front))
        return front


class WrapperSplitTests(SynchronousTestCase):
    """The inbound wrapper on a StringTransport, the header arriving in any pieces."""

    @given(_headers, st.binary(max_size=40), st.lists(st.integers(0, 200), max_size=6))
    def test_front_sees_the_same_whatever_the_split(
        self, header: bytes, after: bytes, cuts: list[int]
    ) -> None:
        """The front is built once, with the header's client, and gets exactly the bytes after."""
        inner = _Fronts()
        factory = ProxyProtocolFactory(inner, TrustedNetworks(["127.0.0.1/32"]), 5.0, Clock())
        peer = IPv4Address("TCP", "127.0.0.1", 5000)
        wrapper = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        wrapper.makeConnection(transport)
        for chunk in _splits(header + after, cuts):
            wrapper.dataReceived(chunk)
        parsed = parse_header(header)
        assert parsed is not None
        self.assertFalse(transport.disconnecting)
        [(address, front)] = inner.built
        self.assertEqual(address, parsed[0].source or peer)
        self.assertEqual(front.received, after)


class RoundTripTests(SynchronousTestCase):
    """What L{encode_header} writes for a backend, L{parse_header} reads back."""

    @given(st.sampled_from(["v1", "v2"]), _pairs)
    def test_encode_then_parse(
        self, version: str, pair: tuple[tuple[str, int], tuple[str, int]]
    ) -> None:
        """The same addresses and ports, normalised as C{ipaddress} writes them."""
        source, destination = pair
        header, rest = parse_header(encode_header(version, source, destination)) or (None, None)
        self.assertEqual(rest, b"")
        assert header is not None
        kind = IPv4Address if "." in source[0] else IPv6Address
        self.assertEqual(header.version, 1 if version == "v1" else 2)
        self.assertEqual(
            (header.source, header.destination),
            (
                kind("TCP", str(ipaddress.ip_address(source[0])), source[1]),
                kind("TCP", str(ipaddress.ip_address(destination[0])), destination[1]),
            ),
        )

    @given(st.sampled_from(["v1", "v2"]), _ipv4, _ipv6, _ports)
    def test_mixed_families_are_unknown(self, version: str, v4: str, v6: str, port: int) -> None:
        """Addresses of two families go as UNKNOWN (v1) or LOCAL (v2): read as no address."""
        encoded = encode_header(version, (v4, port), (v6, port))
        self.assertEqual(
            parse_header(encoded),
            (ProxyHeader(1 if version == "v1" else 2, None, None), b""),
        )
