"""Assemble the service tree: the router, one listening service per C{[[listen]]}, the demo."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory

from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.listeners import new_server_tls, server_endpoint, tls_reload_service
from relaygate.policy import LimitedFactory, new_limits
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Router
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
    from relaygate.smtp.front import SMTPFrontFactory

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


def build_service(
    config: Config,
    reactor: IGatewayReactor,
    adopted: Mapping[str, IStreamServerEndpoint] | None = None,
    with_demo: bool = True,
) -> MultiService:
    """Everything one relaygate process runs for C{config}, built on C{reactor}.

    @param adopted: endpoints for already-bound sockets, by listen address (in a worker).
    @param with_demo: whether this process runs the demo backend (a worker's parent does).
    """
    top = MultiService()
    if with_demo and config.demo is not None:
        from relaygate.demo import demo_service

        demo_service(config.demo, config.server.name, reactor).setServiceParent(top)
    router = build_router(config, reactor, top)
    limits = new_limits(config.limits, reactor)
    built: list[ServerTLS] = []
    for listen in config.listen:
        # One ServerTLS per listener: the endpoint (implicit TLS) and the front (STARTTLS)
        # share it, and SIGHUP reloads exactly these.
        server_tls = new_server_tls(listen, config)
        if server_tls is not None:
            built.append(server_tls)
        factory = FACTORIES[listen.protocol](config, listen, router, reactor, server_tls)
        if limits is not None:
            # Above TLS, so a client over a limit reads its refusal; one Limits per process.
            factory = LimitedFactory(factory, limits, listen.protocol, config.server.name)
        base = (adopted or {}).get(str(listen.address))
        endpoint = server_endpoint(listen, config, reactor, server_tls, base)
        service = StreamServerEndpointService(endpoint, factory)
        service._raiseSynchronously = True
        service.setServiceParent(top)
    reload_service = tls_reload_service(built, reactor)
    if reload_service is not None:
        # SIGHUP re-reads the certificates of every TLS listener (docs/tls.md, "Renewal").
        reload_service.setServiceParent(top)
    return top
