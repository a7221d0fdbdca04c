"""Network addresses as relaygate names them: C{host:port} values and a client's two ends.

A leaf module: it imports nothing of relaygate's, so config, routing, the fronts and the
backend leg can all use these values without importing one another.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address


@dataclass(frozen=True)
class HostPort:
    """A host (IP address or name) and a TCP port, as written ``host:port`` or ``[v6]:port``."""

    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        """True when the host is an IPv6 literal."""
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


def parse_host_port(
    text: str, default_port: int | None = None, any_port: bool = False
) -> HostPort:
    """Parse ``host:port``, ``[v6]:port`` (or a bare host when C{default_port} is given).

    C{any_port} allows port 0 (a listener on a port the kernel picks, as tests use).

    @raise ValueError: with a short reason when C{text} is not an address.
    """
    text = text.strip()
    port_text: str | None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']' after the IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError("expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError("write IPv6 addresses as [ADDRESS]:PORT")
    else:
        host, port_text = text, None
    if not host:
        raise ValueError("missing host")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"{host!r} is not a host name or address")
    if port_text is None:
        if default_port is None:
            raise ValueError("missing ':PORT'")
        return HostPort(host, default_port)
    if not port_text.isdigit() or not (0 if any_port else 1) <= int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a port number (1-65535)")
    return HostPort(host, int(port_text))


@dataclass(frozen=True)
class ClientAddress:
    """Where the client connected from and to, as the backend should be told."""

    ip: str
    port: int
    local_ip: str
    local_port: int


def client_address(peer: object, host: object) -> ClientAddress:
    """Build a L{ClientAddress} from a transport's C{getPeer()} and C{getHost()}."""

    def split(address: object) -> tuple[str, int]:
        if isinstance(address, IPv4Address | IPv6Address):
            return address.host, address.port
        return "", 0

    ip, port = split(peer)
    local_ip, local_port = split(host)
    return ClientAddress(ip, port, local_ip, local_port)
