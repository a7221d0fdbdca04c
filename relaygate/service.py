"""Assemble one process's service tree: the router, one listening service per C{[[listen]]},
the demo, and the operations services; reload it on SIGHUP and drain it on SIGTERM."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, globalLogPublisher
from typing_extensions import override

from relaygate.config.errors import ConfigError
from relaygate.config.limits import LimitsConfig
from relaygate.config.load import load
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.listeners import new_server_tls, server_endpoint
from relaygate.observe import add_access_observer, remove_access_observer
from relaygate.ops.build import (
    Operations,
    access_log_service,
    health_targets,
    metrics_service,
    new_health,
)
from relaygate.ops.drain import Drain
from relaygate.ops.lifecycle import SignalHandlers, SwitchFactory
from relaygate.ops.metered import AccessMetrics, MeteredReactor, MeteredRouter
from relaygate.ops.metrics import new_metrics
from relaygate.ops.sessions import SessionRegistry
from relaygate.ops.wrapper import OpsFactory
from relaygate.policy import LimitedFactory, Limits, new_limits
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Router
from relaygate.tls.errors import CertificateError
from relaygate.tls.server import ServerTLS

FactoryMaker = Callable[[Config, ListenConfig, Router, IGatewayReactor, ServerTLS | None], Factory]


def build_router(config: Config, reactor: IGatewayReactor, parent: MultiService) -> Router:
    """The auth_http router when C{[auth] http} is set, else the embedded C{[[route]]} table."""
    if config.auth.http:
        from relaygate.routing.http import new_http_router

        router, service = new_http_router(config.auth, reactor)
        service.setServiceParent(parent)
        return router
    from relaygate.routing.table import TableRouter

    return TableRouter(config.routes)


def _smtp_factory(
    config: Config,
    listen: ListenConfig,
    router: Router,
    reactor: IGatewayReactor,
    server_tls: ServerTLS | None,
) -> Factory:
    from relaygate.smtp.factory import SMTPFrontFactory

    return SMTPFrontFactory(config, listen, router, reactor, server_tls=server_tls)


def _imap_factory(
    config: Config,
    listen: ListenConfig,
    router: Router,
    reactor: IGatewayReactor,
    server_tls: ServerTLS | None,
) -> Factory:
    from relaygate.imap import IMAPFrontFactory

    return IMAPFrontFactory(config, listen, router, reactor, server_tls=server_tls)


def _pop3_factory(
    config: Config,
    listen: ListenConfig,
    router: Router,
    reactor: IGatewayReactor,
    server_tls: ServerTLS | None,
) -> Factory:
    from relaygate.pop3 import POP3FrontFactory

    return POP3FrontFactory(config, listen, router, reactor, server_tls=server_tls)


FACTORIES: dict[str, FactoryMaker] = {
    "smtp": _smtp_factory,
    "imap": _imap_factory,
    "pop3": _pop3_factory,
}


def _listen_key(listen: ListenConfig, config: Config) -> tuple[object, ...]:
    """What a listening socket's endpoint depends on: a reload that keeps it keeps the socket.

    The endpoint layers PROXY (with C{[realip]}) and implicit TLS (with C{[tls]}) around the
    socket; when those change the listener is replaced. Everything else lives in the front
    factory, which a reload swaps behind the open socket.
    """
    return (
        listen,
        config.realip if listen.proxy_protocol else None,
        config.tls if listen.tls == "implicit" else None,
    )


@dataclass
class Generation:
    """Everything built from one reading of the configuration file (one per reload)."""

    number: int
    config: Config
    services: MultiService
    ops: Operations
    factories: dict[tuple[object, ...], tuple[ListenConfig, Factory, ServerTLS | None]]


@dataclass
class _Listener:
    service: StreamServerEndpointService
    switch: SwitchFactory
    server_tls: ServerTLS | None


class Gateway(MultiService):
    """One relaygate process: its listeners, the current configuration generation, drain
    on SIGTERM and reload on SIGHUP (docs/operations.md)."""

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: IGatewayReactor,
        adopted: Mapping[str, IStreamServerEndpoint] | None = None,
        with_demo: bool = True,
        stop: Callable[[], object] | None = None,
        serve_metrics: bool = True,
        reloadable: bool = True,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._adopted = dict(adopted or {})
        self._stop = stop
        self._stopping = False
        self._serve_metrics = serve_metrics
        self.metrics, self.scrape = new_metrics()
        self.sessions = SessionRegistry(reactor)
        self.drain = Drain(
            self.sessions, reactor, config.server.drain_timeout, self.stop_listening
        )
        self._access_metrics = AccessMetrics(self.metrics)
        self.listeners: dict[tuple[object, ...], _Listener] = {}
        self._limits: tuple[LimitsConfig, Limits | None] | None = None
        self._numbers = itertools.count(1)
        if with_demo and config.demo is not None:
            from relaygate.demo import demo_service

            demo_service(config.demo, config.server.name, reactor).setServiceParent(self)
        self.generation = self._build(config)
        self.generation.services.setServiceParent(self)
        for key, (listen, factory, server_tls) in self.generation.factories.items():
            self._open(key, listen, factory, server_tls, config)
        self._metrics_service: Service | None = None
        self._access_log: Service | None = None
        self._set_process_services(config, None)
        if stop is not None:
            SignalHandlers(
                reactor, self.terminate, self.stop_now, self.reload if reloadable else None
            ).setServiceParent(self)

    def _build(self, config: Config) -> Generation:
        """Build (not start) the router, health, limits and front factories for C{config}.

        @raise Exception: whatever building fails with (certificates that cannot be loaded).
        """
        services = MultiService()
        number = next(self._numbers)
        health = new_health(config, self._reactor, self.metrics)
        health.setServiceParent(services)
        ops = Operations(self.metrics, self.sessions, health, number, self.drain)
        router = MeteredRouter(
            build_router(config, self._reactor, services), self.metrics, self._reactor, health
        )
        # The fronts' backend connections are timed and passively marked (relaygate.ops).
        fronts_reactor = cast(IGatewayReactor, MeteredReactor(self._reactor, self.metrics, health))
        # A reload that keeps [limits] keeps their counts (a reload must not reset them).
        if self._limits is None or self._limits[0] != config.limits:
            self._limits = (config.limits, new_limits(config.limits, self._reactor))
        limits = self._limits[1]
        factories: dict[tuple[object, ...], tuple[ListenConfig, Factory, ServerTLS | None]] = {}
        for listen in config.listen:
            # One ServerTLS per listener: the endpoint (implicit TLS) and the front (STARTTLS)
            # share it.
            server_tls = new_server_tls(listen, config)
            factory = FACTORIES[listen.protocol](
                config, listen, router, fronts_reactor, server_tls
            )
            # Innermost: the front's transport is the session's entry in the registry.
            factory = OpsFactory(
                factory,
                ops,
                listen.protocol,
                str(listen.address),
                config.server.name,
                implicit_tls=listen.tls == "implicit",
            )
            if limits is not None:
                # Above TLS, so a client over a limit reads its refusal; one Limits per process.
                factory = LimitedFactory(factory, limits, listen.protocol, config.server.name)
            factories[_listen_key(listen, config)] = (listen, factory, server_tls)
        return Generation(number, config, services, ops, factories)

    def _open(
        self,
        key: tuple[object, ...],
        listen: ListenConfig,
        factory: Factory,
        server_tls: ServerTLS | None,
        config: Config,
    ) -> None:
        base = self._adopted.get(str(listen.address))
        endpoint = server_endpoint(listen, config, self._reactor, server_tls, base)
        switch = SwitchFactory(factory)
        service = StreamServerEndpointService(endpoint, switch)
        service._raiseSynchronously = True
        service.setServiceParent(self)
        self.listeners[key] = _Listener(service, switch, server_tls)

    def _set_process_services(self, config: Config, old: Config | None) -> None:
        """Start, keep or replace the metrics listener and the JSON access log."""
        if old is None or old.metrics != config.metrics:
            if self._metrics_service is not None:
                self._metrics_service.disownServiceParent()
            service = (
                metrics_service(config, self._reactor, self.scrape, self.sessions)
                if self._serve_metrics
                else None
            )
            if service is not None:
                service.setServiceParent(self)
            self._metrics_service = service
        if old is None or old.log != config.log:
            if self._access_log is not None:
                self._access_log.disownServiceParent()
            self._access_log = access_log_service(config, self._reactor)
            if self._access_log is not None:
                self._access_log.setServiceParent(self)

    @override
    def startService(self) -> None:
        globalLogPublisher.addObserver(self._access_metrics)
        add_access_observer(self._access_metrics.access)
        super().startService()

    @override
    def stopService(self) -> Deferred[None]:
        globalLogPublisher.removeObserver(self._access_metrics)
        remove_access_observer(self._access_metrics.access)
        stopped: Deferred[None] = super().stopService()
        return stopped

    @property
    def ops(self) -> Operations:
        """The current generation's operations (what new sessions report to)."""
        return self.generation.ops

    def stop_listening(self) -> Deferred[list[object]]:
        """Close every mail listener (the drain's first step); new connections are refused."""
        stopping = [listener.service.stopService() for listener in self.listeners.values()]
        return gatherResults([d for d in stopping if d is not None])

    def terminate(self) -> None:
        """SIGTERM: drain, then stop; a second SIGTERM stops at once."""
        if self.drain.draining:
            self.stop_now()
            return
        self.drain.start().addCallback(lambda _: self._stop_process())

    def stop_now(self) -> None:
        """SIGINT (or a second SIGTERM): close every session and stop."""
        self.drain.stop_now().addCallback(lambda _: self._stop_process())

    def _stop_process(self) -> None:
        if self._stopping or self._stop is None:
            return
        self._stopping = True
        self._stop()

    def reload(self) -> bool:
        """SIGHUP: re-read the file; on success new sessions use it, else keep running."""
        path = self.generation.config.path
        if self.drain.draining:
            self._log.warn("SIGHUP ignored: draining")
            return False
        try:
            config = load(path)
            new = self._build(config)
        except (ConfigError, CertificateError) as e:
            self._log.error(
                "reload failed, keeping the running configuration: {error}", error=str(e)
            )
            self.metrics.config_reload("failure")
            return False
        except Exception:
            self._log.failure("reload failed, keeping the running configuration")
            self.metrics.config_reload("failure")
            return False
        self._apply(new)
        self.metrics.config_reload("success")
        self._log.info("reloaded {path} (generation {number})", path=path, number=new.number)
        return True

    def _apply(self, new: Generation) -> None:
        old = self.generation
        new.services.setServiceParent(self)
        for key, (listen, factory, server_tls) in new.factories.items():
            existing = self.listeners.get(key)
            if existing is None:
                self._open(key, listen, factory, server_tls, new.config)
                continue
            existing.switch.switch(factory)
            if existing.server_tls is not None:
                # The endpoint's (implicit TLS) creator stays; give it the renewed files.
                existing.server_tls.reload()
        for key in [k for k in self.listeners if k not in new.factories]:
            self.listeners.pop(key).service.disownServiceParent()
        self.generation = new
        self.drain.set_timeout(new.config.server.drain_timeout)
        self._set_process_services(new.config, old.config)
        old.ops.health.stopService()
        kept = (
            {str(t.backend) for t in health_targets(new.config)}
            if new.config.health.active
            else set()
        )
        for target in health_targets(old.config) if old.config.health.active else []:
            if str(target.backend) not in kept:
                self.metrics.backend_forgotten(str(target.backend))
        # Sessions of the old configuration keep using its router until they end.
        self.sessions.when_empty(old.number).addCallback(lambda _: self._retire(old))

    def _retire(self, old: Generation) -> None:
        if old.services.parent is self:
            old.services.disownServiceParent()


def build_service(
    config: Config,
    reactor: IGatewayReactor,
    adopted: Mapping[str, IStreamServerEndpoint] | None = None,
    with_demo: bool = True,
    stop: Callable[[], object] | None = None,
    reloadable: bool = True,
    serve_metrics: bool = True,
) -> Gateway:
    """Everything one relaygate process runs for C{config}, built on C{reactor}.

    @param adopted: endpoints for already-bound sockets, by listen address (in a worker).
    @param with_demo: whether this process runs the demo backend (a worker's parent does).
    @param stop: stops the process (C{reactor.stop}); given, SIGTERM drains, SIGINT stops and
        SIGHUP reloads. Tests that run the tree inside their own reactor leave it out.
    @param reloadable: whether SIGHUP reloads (a worker's parent reloads by replacing it).
    @param serve_metrics: whether this process runs C{[metrics] listen} (a worker's parent does).
    """
    return Gateway(config, reactor, adopted, with_demo, stop, serve_metrics, reloadable)
