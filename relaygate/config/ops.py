"""C{[metrics]}, C{[health]} and C{[log]}: the operations sections (docs/operations.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from relaygate.addresses import HostPort
from relaygate.config.table import Table


@dataclass(frozen=True)
class MetricsConfig:
    """C{[metrics]}: the HTTP listener for C{/metrics} and C{/sessions} (off without C{listen})."""

    listen: HostPort | None = None
    token: str = ""


@dataclass(frozen=True)
class HealthConfig:
    """C{[health]}: active probes of C{[[route]]} backends, and passive marking."""

    active: bool = False
    """True when the C{[health]} section is present: route backends are probed."""
    interval: float = 5.0
    timeout: float = 2.0
    fall: int = 2
    rise: int = 2
    passive_down: float = 10.0
    """Seconds a backend whose connection failed is avoided where another is available."""


@dataclass(frozen=True)
class LogConfig:
    """C{[log]}: where access events go as JSON lines (off when C{access} is empty)."""

    access: str = ""


def read_metrics(t: Table) -> MetricsConfig:
    listen = t.address("listen", any_port=True) if "listen" in t.data else None
    token = t.string("token", "")
    if any(c.isspace() for c in token):
        raise t.error("token", "must not contain white space (it goes in an HTTP header)")
    if token and listen is None:
        raise t.error("token", "needs [metrics] listen")
    metrics = MetricsConfig(listen=listen, token=token)
    t.finish()
    return metrics


def read_health(t: Table, present: bool) -> HealthConfig:
    health = HealthConfig(
        active=present,
        interval=t.number("interval", 5.0, minimum=0.1),
        timeout=t.number("timeout", 2.0, minimum=0.001),
        fall=t.integer("fall", 2, minimum=1),
        rise=t.integer("rise", 2, minimum=1),
        passive_down=t.number("passive_down", 10.0),
    )
    if health.timeout > health.interval:
        raise t.error("timeout", f"{health.timeout} is longer than interval ({health.interval})")
    t.finish()
    return health


def read_log(t: Table, base: str) -> LogConfig:
    access = t.string("access", "")
    if access:
        # The file itself is created on first use (and again after logrotate moves it away);
        # its directory must exist.
        access = os.path.normpath(os.path.join(base, access))
        if not os.path.isdir(os.path.dirname(access)):
            raise t.error("access", f"directory {os.path.dirname(access)!r} does not exist")
    log = LogConfig(access=access)
    t.finish()
    return log
