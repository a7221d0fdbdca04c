"""The PROXY protocol (HAProxy's proxy-protocol.txt, v1 and v2): inbound from trusted peers only,
and outbound to backends, so every hop sees the real client.

Inbound, L{proxy_endpoint} wraps a listener's endpoint. Each connection must come from a
C{[realip] trusted} network and start with a complete, valid header within
C{[realip] header_timeout}; otherwise it is closed before the front is even built (so no
greeting is sent) and the reason is logged. Once the header is read, the front is built with
the client's address, and C{getPeer}/C{getHost} answer the header's addresses, so Client-IP,
XCLIENT ADDR/PORT, limits and logs all see the real client; L{proxy_addresses} gives what the
auth service gets as C{Proxy-Protocol-*}.

Why not L{twisted.protocols.haproxy.proxyEndpoint} as is: its wrapper accepts a header from
any peer (so anyone could claim any address), closes a connection whose first read is shorter
than 8 (v1) or 16 (v2) bytes although TCP may split the header anywhere, and builds the wrapped
protocol (our front sends its greeting on connection) before the header has arrived. Its
parsers are private API, so the two header formats are parsed here (and v1 lines more strictly
than its parser does: addresses and ports must be valid).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet import address as net_address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.routing.router import ProxyAddresses
from relaygate.wrapping import FactoryWrapper, TransportWrapper

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX: Final = b"PROXY "
# proxy-protocol.txt 2.1: a v1 line is at most 107 bytes with its CRLF.
_V1_MAX: Final = 107
# v2 allows 64 KiB of TLVs; nothing we read needs more than the addresses and a few TLVs.
_V2_MAX: Final = 16 + 2048

IPAddress = net_address.IPv4Address | net_address.IPv6Address


class HeaderError(Exception):
    """The bytes are not a valid PROXY header (the message says why, for the log)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header said: the client (C{source}) and the address it connected to.

    Both are C{None} for v1 C{UNKNOWN}, v2 C{LOCAL} (health checks) and non-IP families: the
    connection's own addresses then stand.
    """

    version: int
    source: IPAddress | None
    destination: IPAddress | None


def parse_header(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    """Read a PROXY header from the start of C{data}.

    @return: the header and the bytes after it, or C{None} while C{data} is a valid but
        incomplete beginning of a header.
    @raise HeaderError: when C{data} cannot start a valid header.
    """
    if data[:12] == V2_SIGNATURE[: len(data[:12])]:
        return _parse_v2(data)
    if data[:6] == _V1_PREFIX[: len(data[:6])]:
        return _parse_v1(data)
    raise HeaderError("no PROXY header")


def _parse_v2(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    if len(data) < 16:
        return None
    if data[12] >> 4 != 2 or data[12] & 0x0F not in (0, 1):
        raise HeaderError("v2 header with an unknown version or command")
    size = 16 + struct.unpack("!H", data[14:16])[0]
    if size > _V2_MAX:
        raise HeaderError(f"v2 header of {size} bytes is too long")
    if len(data) < size:
        return None
    header, rest = data[:size], data[size:]
    if data[13] & 0x0F not in (0, 1):
        # Datagram or unknown transport: not a description of this TCP connection.
        raise HeaderError("v2 header for a non-stream transport")
    family = data[13] >> 4
    if data[12] & 0x0F == 0 or family not in _V2_FAMILIES:
        # LOCAL (a health check), or an address family that does not describe a TCP client.
        return ProxyHeader(2, None, None), rest
    kind, length, size_of_addresses = _V2_FAMILIES[family]
    block = header[16:]
    if len(block) < size_of_addresses:
        raise HeaderError("v2 header too short for its addresses")
    source_port, destination_port = struct.unpack("!HH", block[2 * length : 2 * length + 4])
    source = ipaddress.ip_address(block[:length])
    destination = ipaddress.ip_address(block[length : 2 * length])
    return (
        ProxyHeader(
            2,
            kind("TCP", str(source), source_port),
            kind("TCP", str(destination), destination_port),
        ),
        rest,
    )


# proxy-protocol.txt 2.2: address family -> (address type, bytes per address, address block).
# Parsed here rather than with twisted.protocols.haproxy's v2 parser, which is private API.
_V2_FAMILIES: Final[dict[int, tuple[type[IPAddress], int, int]]] = {
    1: (net_address.IPv4Address, 4, 12),
    2: (net_address.IPv6Address, 16, 36),
}


def _parse_v1(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise HeaderError("v1 header without CRLF in 107 bytes")
        return None
    line, rest = data[:end], data[end + 2 :]
    fields = line.split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyHeader(1, None, None), rest
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise HeaderError("malformed v1 header")
    _, family, source, destination, source_port, destination_port = fields
    kind = net_address.IPv4Address if family == b"TCP4" else net_address.IPv6Address
    version = 4 if family == b"TCP4" else 6
    hosts = []
    for text in (source, destination):
        try:
            parsed = ipaddress.ip_address(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise HeaderError("v1 header with an invalid address") from None
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is not None:
            # ipaddress accepts "fe80::1%anything"; a scope names an interface of the
            # proxy's host, not a client, and its text would reach Client-IP and XCLIENT.
            raise HeaderError("v1 header with a scoped IPv6 address")
        if parsed.version != version:
            raise HeaderError("v1 header whose address does not match its family")
        hosts.append(str(parsed))
    ports = []
    for text in (source_port, destination_port):
        if not text.isdigit() or len(text) > 5 or (text.startswith(b"0") and text != b"0"):
            raise HeaderError("v1 header with an invalid port")
        if int(text) > 65535:
            raise HeaderError("v1 header with an invalid port")
        ports.append(int(text))
    return (
        ProxyHeader(1, kind("TCP", hosts[0], ports[0]), kind("TCP", hosts[1], ports[1])),
        rest,
    )


class TrustedNetworks:
    """The C{[realip] trusted} networks: who may tell us another client's address."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self._networks)


class ProxyProtocolWrapper(TransportWrapper):
    """Reads the PROXY header of one connection, then builds and feeds the real protocol.

    It stays the real protocol's transport so that C{getPeer} and C{getHost} can answer the
    header's addresses.
    """

    _log = Logger()

    def __init__(self, factory: ProxyProtocolFactory) -> None:
        self._factory = factory
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._header: ProxyHeader | None = None
        self.proxy_addresses: ProxyAddresses | None = None

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        if host not in self._factory.trusted:
            self._refuse("PROXY listener connection from an untrusted address", peer)
            return
        self._timer = self._factory.clock.callLater(self._factory.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        assert self.transport is not None
        self._refuse(
            "no PROXY header in time",
            self.transport.getPeer(),
            received=len(self._buffer),
        )

    def _refuse(self, why: str, peer: IAddress, **fields: object) -> None:
        """Close without a word: a client that gets no greeting learns nothing about us."""
        self._log.warn(
            "closing {peer}: {why}",
            why=why,
            peer=_describe(peer),
            listener=_describe(self.transport.getHost()) if self.transport else "",
            **fields,
        )
        self._cancel_timer()
        self.disconnecting = True
        transport: Any = self.transport
        transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        if self.disconnecting:
            return
        self._buffer += data
        assert self.transport is not None
        try:
            parsed = parse_header(self._buffer)
        except HeaderError as e:
            self._refuse("invalid PROXY header", self.transport.getPeer(), error=str(e))
            return
        if parsed is None:
            return
        self._cancel_timer()
        self._buffer = b""
        header, rest = parsed
        self._header = header
        peer = self.getPeer()
        if header.source is not None and header.destination is not None:
            self.proxy_addresses = ProxyAddresses(
                addr=header.source.host,
                port=header.source.port,
                server_addr=header.destination.host,
                server_port=header.destination.port,
            )
        wrapped = self._factory.wrapped_factory.buildProtocol(peer)
        if wrapped is None:
            self.loseConnection()
            return
        self.connect_wrapped(wrapped, rest)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._cancel_timer()
        super().connectionLost(reason)

    @override
    def getPeer(self) -> IAddress:
        """The client's address: the header's source, else the connection's peer."""
        if self._header is not None and self._header.source is not None:
            return self._header.source
        return super().getPeer()

    @override
    def getHost(self) -> IAddress:
        """The address the client connected to: the header's destination, else ours."""
        if self._header is not None and self._header.destination is not None:
            return self._header.destination
        return super().getHost()


class ProxyProtocolFactory(FactoryWrapper):
    """Wraps a listener's factory: each connection first goes through L{ProxyProtocolWrapper}."""

    def __init__(
        self,
        wrapped_factory: IProtocolFactory,
        trusted: TrustedNetworks,
        timeout: float,
        clock: IReactorTime,
    ) -> None:
        super().__init__(wrapped_factory)
        self.trusted = trusted
        self.timeout = timeout
        self.clock = clock

    @override
    def buildProtocol(self, addr: IAddress | None) -> ProxyProtocolWrapper:
        return ProxyProtocolWrapper(self)


@implementer(IStreamServerEndpoint)
class ProxyServerEndpoint:
    """A server endpoint whose connections must start with a PROXY header from a trusted peer."""

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        trusted: TrustedNetworks,
        timeout: float,
        clock: IReactorTime,
    ) -> None:
        self._endpoint = endpoint
        self._trusted = trusted
        self._timeout = timeout
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        """Listen on the wrapped endpoint with C{protocolFactory} behind the PROXY reader."""
        factory = ProxyProtocolFactory(protocolFactory, self._trusted, self._timeout, self._clock)
        return self._endpoint.listen(factory)


def proxy_endpoint(
    endpoint: IStreamServerEndpoint, trusted: Iterable[str], timeout: float, clock: IReactorTime
) -> IStreamServerEndpoint:
    """Wrap C{endpoint} so each connection must start with a PROXY header from C{trusted}."""
    return ProxyServerEndpoint(endpoint, TrustedNetworks(trusted), timeout, clock)


def proxy_addresses(transport: object) -> ProxyAddresses | None:
    """The addresses a PROXY header gave this connection (C{None} without one).

    Wrapping transports (TLS, limits) forward attribute lookups to the one below them, so this
    finds the PROXY wrapper whatever lies between it and the front.
    """
    found = getattr(transport, "proxy_addresses", None)
    return found if isinstance(found, ProxyAddresses) else None


# -- outbound ------------------------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """C{text} as an address, an IPv4-mapped IPv6 address in its IPv4 form; C{None} if none."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def encode_header(version: str, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The PROXY header (C{version} C{"v1"} or C{"v2"}) saying C{source} connected to
    C{destination}; C{UNKNOWN}/C{LOCAL} when the addresses are not both IPv4 or both IPv6."""
    src, dst = _ip(source[0]), _ip(destination[0])
    if src is None or dst is None or src.version != dst.version:
        return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_SIGNATURE + b"\x20\x00\x00\x00"
    ports = (source[1], destination[1])
    if version == "v1":
        family = b"TCP4" if src.version == 4 else b"TCP6"
        return b"PROXY %s %s %s %d %d\r\n" % (family, str(src).encode(), str(dst).encode(), *ports)
    body = src.packed + dst.packed + struct.pack("!HH", *ports)
    family_byte = b"\x11" if src.version == 4 else b"\x21"
    return V2_SIGNATURE + b"\x21" + family_byte + struct.pack("!H", len(body)) + body


@implementer(IHalfCloseableProtocol)
class _Preamble(Protocol):
    """Writes the PROXY header on the raw connection, then hands it to the real protocol."""

    def __init__(self, wrapped: IProtocol, data: bytes) -> None:
        self.wrapped = wrapped
        self._data = data

    @override
    def makeConnection(self, transport: Any) -> None:
        # Before the wrapped protocol (which may be a TLS layer) writes anything of its own.
        transport.write(self._data)
        self.transport = transport
        self.wrapped.makeConnection(transport)

    @override
    def dataReceived(self, data: bytes) -> None:
        self.wrapped.dataReceived(data)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.wrapped.connectionLost(reason)

    def readConnectionLost(self) -> None:
        """Pass the backend's half-close on, or close as TCP would for a plain protocol."""
        half = IHalfCloseableProtocol(self.wrapped, None)
        if half is not None:
            half.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Pass on that our side was half-closed."""
        half = IHalfCloseableProtocol(self.wrapped, None)
        if half is not None:
            half.writeConnectionLost()


class _PreambleFactory(Factory):
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, data: bytes) -> None:
        self._wrapped = wrapped
        self._data = data

    @override
    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        assert addr is not None
        protocol = self._wrapped.buildProtocol(addr)
        return None if protocol is None else _Preamble(protocol, self._data)


@implementer(IStreamClientEndpoint)
class PreambleEndpoint:
    """A client endpoint that sends C{data} (a PROXY header) first on every connection."""

    def __init__(self, endpoint: IStreamClientEndpoint, data: bytes) -> None:
        self._endpoint = endpoint
        self._data = data

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """Connect, send the header, and fire with the real protocol."""
        connecting = self._endpoint.connect(_PreambleFactory(protocolFactory, self._data))
        return connecting.addCallback(_unwrap)


def _unwrap(protocol: IProtocol) -> IProtocol:
    assert isinstance(protocol, _Preamble)
    return protocol.wrapped


def _describe(address: object) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
