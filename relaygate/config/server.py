"""C{[server]} and C{[[listen]]}: process-wide settings and the sockets to listen on."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Final

from relaygate.addresses import HostPort
from relaygate.config.table import Table

PROTOCOLS: Final = ("smtp", "imap", "pop3")
LISTEN_TLS_MODES: Final = ("none", "starttls", "starttls-required", "implicit")


@dataclass(frozen=True)
class ServerConfig:
    """C{[server]}: process-wide settings."""

    name: str
    workers: int = 1
    idle_timeout: float = 300.0
    connect_timeout: float = 10.0
    session_timeout: float = 3600.0
    drain_timeout: float = 30.0


@dataclass(frozen=True)
class ListenConfig:
    """One C{[[listen]]} entry: a socket, its protocol and how TLS and PROXY apply to it."""

    protocol: str
    address: HostPort
    tls: str = "none"
    proxy_protocol: bool = False


def read_server(t: Table) -> ServerConfig:
    """Read C{[server]}; C{workers} may be a number or C{"auto"} (one per CPU)."""
    workers_raw = t.data.get("workers", 1)
    t.used.add("workers")
    if workers_raw == "auto":
        workers = os.cpu_count() or 1
    elif isinstance(workers_raw, int) and not isinstance(workers_raw, bool) and workers_raw >= 1:
        workers = workers_raw
    else:
        raise t.error("workers", f'expected a number of processes or "auto", got {workers_raw!r}')
    server = ServerConfig(
        name=t.string("name", socket.getfqdn() or "localhost"),
        workers=workers,
        idle_timeout=t.number("idle_timeout", 300.0, minimum=0.001),
        connect_timeout=t.number("connect_timeout", 10.0, minimum=0.001),
        session_timeout=t.number("session_timeout", 3600.0, minimum=0.001),
        drain_timeout=t.number("drain_timeout", 30.0),
    )
    if not server.name or any(c.isspace() for c in server.name):
        raise t.error("name", f"{server.name!r} is not a host name")
    t.finish()
    return server


def read_listen(t: Table) -> ListenConfig:
    """Read one C{[[listen]]} entry."""
    listen = ListenConfig(
        protocol=t.choice("protocol", PROTOCOLS),
        address=t.address("address", any_port=True),
        tls=t.choice("tls", LISTEN_TLS_MODES, "none"),
        proxy_protocol=t.boolean("proxy_protocol", False),
    )
    t.finish()
    return listen
