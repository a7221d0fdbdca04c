"""Build the operations services of one process from its configuration.

L{Operations} is what the fronts are handed: the metrics to count on, the session registry to
join, the health state failover asks, and the drain to consult. The builders here make the
services that own resources: the health probes, the metrics listener (only when
C{[metrics] listen} is set) and the JSON access log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

from relaygate.config.model import Config
from relaygate.ops.accesslog import AccessLogService
from relaygate.ops.drain import Drain
from relaygate.ops.health import Health, HealthSettings
from relaygate.ops.metrics import Metrics
from relaygate.ops.probe import ProbeTarget
from relaygate.ops.sessions import SessionRegistry, SessionView
from relaygate.ops.web import ops_site
from relaygate.tls.client import backend_tls_creator


@dataclass
class Operations:
    """What the fronts of one configuration generation report to and ask.

    C{metrics} and C{sessions} are the process's (shared across reloads); C{health} is this
    generation's (its probes follow this configuration's routes); C{drain} is the process's.
    """

    metrics: Metrics
    sessions: SessionRegistry
    health: Health
    generation: int = 0
    drain: Drain | None = None

    @property
    def draining(self) -> bool:
        """True once SIGTERM (or a reload with workers) started this process's drain."""
        return self.drain is not None and self.drain.draining


def _section(config: Config, protocol: str) -> Any:
    return {"smtp": config.smtp, "imap": config.imap, "pop3": config.pop3}[protocol]


def health_targets(config: Config) -> list[ProbeTarget]:
    """One probe per backend named in a C{[[route]]}, with that route's TLS and PROXY settings.

    A C{protocol = "*"} route is probed in the protocol of the listeners when they all speak
    one; otherwise by its greeting alone, in plain text unless the route says C{implicit}.
    """
    listening = sorted({listen.protocol for listen in config.listen})
    targets: list[ProbeTarget] = []
    for route in config.routes:
        protocol = route.protocol
        if protocol == "*" and len(listening) == 1:
            protocol = listening[0]
        if protocol == "*":
            tls = "implicit" if route.backend_tls == "implicit" else "none"
            section = config.smtp
            proxy = route.backend_proxy_protocol or "none"
        else:
            section = _section(config, protocol)
            tls = route.backend_tls or section.backend_tls
            proxy = route.backend_proxy_protocol or section.backend_proxy_protocol
        for backend in route.backends:
            creator = None
            if tls in ("required", "implicit"):
                creator = backend_tls_creator(
                    backend.host,
                    section.backend_ca,
                    section.backend_certificate,
                    section.backend_key,
                )
            targets.append(ProbeTarget(protocol, backend, tls, proxy, creator))
    return targets


def metrics_endpoint(config: Config, reactor: Any) -> IStreamServerEndpoint | None:
    """The endpoint of C{[metrics] listen}, or None when the listener is off."""
    address = config.metrics.listen
    if address is None:
        return None
    if address.is_ipv6:
        return TCP6ServerEndpoint(reactor, address.port, interface=address.host)
    return TCP4ServerEndpoint(reactor, address.port, interface=address.host)


def new_health(config: Config, reactor: Any, metrics: Metrics | None) -> Health:
    """The health service for C{config}: probes when C{[health]} is present, passive marks."""
    h = config.health
    return Health(
        health_targets(config) if h.active else [],
        HealthSettings(h.interval, h.timeout, h.fall, h.rise, h.passive_down),
        reactor,
        config.server.name,
        metrics,
        active=h.active,
    )


def metrics_service(
    config: Config, reactor: Any, scrape: CollectorRegistry, view: SessionView
) -> Service | None:
    """The C{[metrics] listen} HTTP listener, or None when it is off."""
    endpoint = metrics_endpoint(config, reactor)
    if endpoint is None:
        return None
    service = StreamServerEndpointService(endpoint, ops_site(scrape, view, config.metrics.token))
    service._raiseSynchronously = True
    return service


def access_log_service(config: Config, reactor: Any) -> Service | None:
    """The C{[log] access} JSON log, or None when it is off."""
    if not config.log.access:
        return None
    return AccessLogService(config.log.access, reactor)
