"""Build the operations services of one process from its configuration.

L{Operations} is what the fronts are handed: the metrics to count on, the session registry to
join, the health state failover asks, and the drain to consult. L{build_operations} creates it
and adds to a parent service the pieces that own resources: the health probes, the metrics
listener (only when C{[metrics] listen} is set) and the JSON access log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

from relaygate.config.model import Config
from relaygate.ops.accesslog import AccessLogService
from relaygate.ops.drain import Drain
from relaygate.ops.health import Health, HealthSettings
from relaygate.ops.metrics import Metrics, new_metrics
from relaygate.ops.probe import ProbeTarget
from relaygate.ops.sessions import SessionRegistry, SessionView
from relaygate.ops.web import ops_site
from relaygate.tls.client import backend_tls_creator


@dataclass
class Operations:
    """The operations side of one process, as the fronts and the service see it."""

    metrics: Metrics
    sessions: SessionRegistry
    health: Health
    scrape: CollectorRegistry
    drain: Drain | None = None
    services: list[Any] = field(default_factory=list)

    @property
    def draining(self) -> bool:
        """True once SIGTERM (or a reload) started this process's drain."""
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


def build_operations(
    config: Config,
    reactor: Any,
    parent: MultiService,
    view: SessionView | None = None,
    metrics: tuple[Metrics, CollectorRegistry] | None = None,
    serve_metrics: bool = True,
    access_log: bool = True,
) -> Operations:
    """The operations of one process for C{config}; services are added to C{parent}.

    @param view: what C{/sessions} shows (a parent gathering its workers); this process's
        registry when None.
    @param metrics: the metrics and scrape registry to use (shared across a reload).
    @param serve_metrics: whether this process runs the C{[metrics]} listener.
    @param access_log: whether this process writes C{[log] access} (each worker does; a
        parent that only relays its workers' events does not, or lines would double).
    """
    counted, scrape = metrics if metrics is not None else new_metrics()
    sessions = SessionRegistry(reactor)
    h = config.health
    health = Health(
        health_targets(config) if h.active else [],
        HealthSettings(h.interval, h.timeout, h.fall, h.rise, h.passive_down),
        reactor,
        config.server.name,
        counted,
        active=h.active,
    )
    health.setServiceParent(parent)
    ops = Operations(counted, sessions, health, scrape)
    endpoint = metrics_endpoint(config, reactor) if serve_metrics else None
    if endpoint is not None:
        site = ops_site(scrape, view or sessions, config.metrics.token)
        service = StreamServerEndpointService(endpoint, site)
        service._raiseSynchronously = True
        service.setServiceParent(parent)
        ops.services.append(service)
    if access_log and config.log.access:
        AccessLogService(config.log.access, reactor).setServiceParent(parent)
    return ops
