"""Turn each C{[[listen]]} entry into a server endpoint; protocols never see how bytes arrived.

Implicit-TLS listeners are wrapped with L{wrapServerTLS}; STARTTLS listeners stay plain TCP and
their front calls C{transport.startTLS(server_tls_for(listen, config))}. Both get the same
L{ServerTLS}, built once per listener and shared by all its connections.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, wrapServerTLS
from twisted.internet.interfaces import IReactorFromThreads, IStreamServerEndpoint

from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.tls.reload import ReloadOnSIGHUP
from relaygate.tls.server import ServerTLS

# Keyed by identity, not by value: a config is loaded once and its listeners compared as
# objects, and this must not depend on every config dataclass staying hashable.
_server_tls: dict[int, tuple[weakref.ref[Config], dict[int, ServerTLS]]] = {}


def _built_for(config: Config) -> dict[int, ServerTLS]:
    """The L{ServerTLS} objects built for C{config}'s listeners, by C{id(listen)}."""
    key = id(config)
    entry = _server_tls.get(key)
    if entry is None or entry[0]() is not config:
        forget = lambda _: _server_tls.pop(key, None)  # noqa: E731
        entry = _server_tls[key] = (weakref.ref(config, forget), {})
    return entry[1]


def server_tls_for(listen: ListenConfig, config: Config) -> ServerTLS | None:
    """The TLS creator of C{listen} (C{None} for C{tls = "none"}), the same object every call.

    The fronts call this for STARTTLS; its C{handshake_timeout} and C{verify_client} are the
    configured values they enforce.

    @raise relaygate.tls.errors.CertificateError: when the certificates cannot be loaded (the
        config check loads them first, so this means they changed since).
    """
    if listen.tls == "none":
        return None
    built = _built_for(config)
    creator = built.get(id(listen))
    if creator is None:
        creator = built[id(listen)] = ServerTLS(config.tls, listen.protocol)
    return creator


def reload_certificates(config: Config) -> bool:
    """Re-read the certificates of every listener of C{config} built so far (SIGHUP).

    @return: C{False} when a file could not be used (an error event says which; the previous
        certificate stays in service).
    """
    ok = True
    for creator in list(_built_for(config).values()):
        ok = creator.reload() and ok
    return ok


def tls_reload_service(config: Config, reactor: IReactorFromThreads) -> IService | None:
    """A service reloading C{config}'s certificates on SIGHUP; C{None} if no listener uses TLS.

    Add it to the service tree next to the listeners, so twistd installs and removes the signal
    handler with the other services.
    """
    if all(listen.tls == "none" for listen in config.listen):
        return None
    service: IService = ReloadOnSIGHUP(lambda: reload_certificates(config), reactor)
    return service


def server_endpoint(
    listen: ListenConfig,
    config: Config,
    reactor: Any,
    base: IStreamServerEndpoint | None = None,
) -> IStreamServerEndpoint:
    """The endpoint for C{listen}: TCP on its address, wrapped in TLS for C{tls = "implicit"}
    and in a PROXY header reader (L{relaygate.proxy_protocol}) for C{proxy_protocol = true}.

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
        creator = server_tls_for(listen, config)
        assert creator is not None
        endpoint = wrapServerTLS(creator, endpoint, clock=reactor)
    return endpoint
