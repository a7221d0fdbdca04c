"""Turn each C{[[listen]]} entry into a server endpoint; protocols never see how bytes arrived."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

from relaygate.config import Config, ListenConfig


def server_endpoint(listen: ListenConfig, config: Config, reactor: Any) -> IStreamServerEndpoint:
    """The endpoint for C{listen}: plain TCP on its address."""
    address = listen.address
    endpoint: IStreamServerEndpoint
    if address.is_ipv6:
        endpoint = TCP6ServerEndpoint(reactor, address.port, backlog=511, interface=address.host)
    else:
        endpoint = TCP4ServerEndpoint(reactor, address.port, backlog=511, interface=address.host)
    return endpoint
