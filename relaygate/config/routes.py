"""C{[[route]]}: which backends serve a domain, and the backend TLS and PROXY choices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from relaygate.addresses import HostPort, parse_host_port
from relaygate.config.server import PROTOCOLS
from relaygate.config.table import Table

BACKEND_TLS_MODES: Final = ("none", "opportunistic", "required", "implicit")


PROXY_PROTOCOL_VERSIONS: Final = ("none", "v1", "v2")


@dataclass(frozen=True)
class RouteConfig:
    """One C{[[route]]}: which backends serve a recipient (or login) domain."""

    protocol: str
    match: str
    backends: tuple[HostPort, ...]
    backend_tls: str = ""
    """The route's own C{backend_tls}; C{""} takes the protocol section's value."""
    backend_proxy_protocol: str = ""
    """The route's own C{backend_proxy_protocol}; C{""} takes the protocol section's value."""


def read_route(t: Table) -> RouteConfig:
    """Read one C{[[route]]} entry."""
    protocol = t.choice("protocol", (*PROTOCOLS, "*"), "*")
    match = t.string("match").lower()
    if not match or any(c.isspace() or c in "@<>" for c in match):
        raise t.error("match", f'{match!r} is not a domain or "*"')
    backends_text = t.strings("backends")
    if not backends_text:
        raise t.error("backends", "needs at least one host:port")
    backends = []
    for text in backends_text:
        try:
            backends.append(parse_host_port(text))
        except ValueError as e:
            raise t.error("backends", f"{text!r}: {e}") from None
    backend_tls = t.choice("backend_tls", ("", *BACKEND_TLS_MODES), "")
    route = RouteConfig(
        protocol=protocol,
        match=match,
        backends=tuple(backends),
        backend_tls=backend_tls,
        backend_proxy_protocol=t.choice(
            "backend_proxy_protocol", ("", *PROXY_PROTOCOL_VERSIONS), ""
        ),
    )
    t.finish()
    return route
