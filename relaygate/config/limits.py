"""C{[realip]} and C{[limits]}: who may send PROXY headers, and per-address limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from relaygate.config.table import Table


@dataclass(frozen=True)
class RealIPConfig:
    """C{[realip]}: who may send a PROXY protocol header (nginx's C{set_real_ip_from})."""

    trusted: tuple[str, ...] = ()
    header_timeout: float = 30.0


@dataclass(frozen=True)
class LimitsConfig:
    """C{[limits]}: per client address connection and login limits (0 turns one off)."""

    connections_per_address: int = 0
    connections_per_minute: int = 0
    auth_failures_per_hour: int = 0

    @property
    def any(self) -> bool:
        """True when at least one limit is on."""
        return bool(
            self.connections_per_address
            or self.connections_per_minute
            or self.auth_failures_per_hour
        )


def read_realip(t: Table) -> RealIPConfig:
    """Read C{[realip]}: each trusted source must be an address or CIDR network."""
    trusted = t.strings("trusted", ())
    for network in trusted:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise t.error("trusted", f"{network!r} is not an address or CIDR network") from None
    realip = RealIPConfig(
        trusted=trusted, header_timeout=t.number("header_timeout", 30.0, minimum=0.001)
    )
    t.finish()
    return realip


def read_limits(t: Table) -> LimitsConfig:
    """Read C{[limits]}."""
    limits = LimitsConfig(
        connections_per_address=t.integer("connections_per_address", 0),
        connections_per_minute=t.integer("connections_per_minute", 0),
        auth_failures_per_hour=t.integer("auth_failures_per_hour", 0),
    )
    t.finish()
    return limits
