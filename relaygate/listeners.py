"""Turn each C{[[listen]]} entry into a server endpoint; protocols never see how bytes arrived.

Implicit-TLS listeners are wrapped with L{ServerTLSEndpoint} (C{wrapServerTLS} with the
declaration cache of L{relaygate.tls.transport}); STARTTLS listeners stay plain TCP and
their front calls C{transport.startTLS(server_tls)}. Both get the same L{ServerTLS}, built once
per listener by L{relaygate.service.build_service} and shared by all its connections.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from twisted.application.service import IService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorFromThreads, IStreamServerEndpoint

from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.reactor import IGatewayReactor
from relaygate.tls.reload import ReloadOnSIGHUP
from relaygate.tls.server import ServerTLS
from relaygate.tls.transport import ServerTLSEndpoint


def new_server_tls(listen: ListenConfig, config: Config) -> ServerTLS | None:
    """A new TLS creator for C{listen} (C{None} for C{tls = "none"}).

    L{relaygate.service.build_service} calls this once per listener and hands the result to
    both the endpoint (implicit TLS) and the front's factory (STARTTLS), so all connections of
    a listener share it; its C{handshake_timeout} and C{verify_client} are the configured values
    the fronts enforce.

    @raise relaygate.tls.errors.CertificateError: when the certificates cannot be loaded (the
        config check loads them first, so this means they changed since).
    """
    if listen.tls == "none":
        return None
    return ServerTLS(config.tls, listen.protocol)


def reload_certificates(server_tls: Iterable[ServerTLS]) -> bool:
    """Re-read the certificates of every listener's L{ServerTLS} (SIGHUP).

    @return: C{False} when a file could not be used (an error event says which; the previous
        certificate stays in service).
    """
    ok = True
    for creator in server_tls:
        ok = creator.reload() and ok
    return ok


def tls_reload_service(
    server_tls: Sequence[ServerTLS], reactor: IReactorFromThreads
) -> IService | None:
    """A service reloading the listeners' certificates on SIGHUP; C{None} if there are none.

    Add it to the service tree next to the listeners, so twistd installs and removes the signal
    handler with the other services.
    """
    if not server_tls:
        return None
    built = tuple(server_tls)
    service: IService = ReloadOnSIGHUP(lambda: reload_certificates(built), reactor)
    return service


def server_endpoint(
    listen: ListenConfig,
    config: Config,
    reactor: IGatewayReactor,
    server_tls: ServerTLS | None,
    base: IStreamServerEndpoint | None = None,
) -> IStreamServerEndpoint:
    """The endpoint for C{listen}: TCP on its address, wrapped in TLS for C{tls = "implicit"}
    and in a PROXY header reader (L{relaygate.proxy_protocol}) for C{proxy_protocol = true}.

    @param server_tls: the listener's TLS (L{new_server_tls}); required for implicit TLS.
    @param base: the endpoint to wrap instead of a new TCP one (a worker's adopted socket).
    """
    address = listen.address
    endpoint: IStreamServerEndpoint
    if base is not None:
        endpoint = base
    elif address.is_ipv6:
        endpoint = TCP6ServerEndpoint(reactor, address.port, backlog=511, interface=address.host)
    else:
        endpoint = TCP4ServerEndpoint(reactor, address.port, backlog=511, interface=address.host)
    if listen.proxy_protocol:
        # Below TLS: the PROXY header comes before the client's first TLS byte.
        from relaygate.proxy_protocol import proxy_endpoint

        realip = config.realip
        endpoint = proxy_endpoint(endpoint, realip.trusted, realip.header_timeout, reactor)
    if listen.tls == "implicit":
        assert server_tls is not None
        endpoint = ServerTLSEndpoint(server_tls, endpoint, reactor)
    return endpoint
