"""The backend policy of one protocol: how its backend connections are made and secured.

The C{[smtp]}, C{[imap]} and C{[pop3]} sections carry the same backend keys (C{backend_tls},
C{backend_ca}, C{backend_certificate}, C{backend_key}, C{backend_proxy_protocol}) and the
timeouts; L{BackendPolicy} holds them once, and a route's own C{backend_tls} or
C{backend_proxy_protocol} (from the router) overrides the section's per session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from relaygate.addresses import ClientAddress, HostPort
from relaygate.proxy_protocol import encode_header
from relaygate.tls.client import backend_tls_creator

TLSCreatorFor = Callable[[HostPort], IOpenSSLClientConnectionCreator]
"""Makes the verifying TLS creator for one backend address (its host is the name checked)."""


@dataclass(frozen=True)
class BackendPolicy:
    """The backend keys of one protocol section, and what follows from them."""

    tls: str = "none"
    """C{none}, C{opportunistic}, C{required} or C{implicit}."""
    ca: str = ""
    certificate: str = ""
    key: str = ""
    proxy_protocol: str = "none"
    """C{none}, C{v1} or C{v2}: a PROXY header sent first on each backend connection."""
    connect_timeout: float = 30.0
    reply_timeout: float = 300.0

    def tls_mode(self, route_mode: str | None = None) -> str:
        """This session's C{backend_tls}: the route's own, else the section's."""
        return route_mode or self.tls

    def tls_for(self, backend: HostPort) -> IOpenSSLClientConnectionCreator:
        """The verifying TLS creator for C{backend}: its host is the name (or IP) checked."""
        return backend_tls_creator(backend.host, self.ca, self.certificate, self.key)

    def implicit_tls(self, mode: str) -> TLSCreatorFor | None:
        """L{tls_for} when C{mode} is C{implicit} (TLS from the first byte), else C{None}."""
        return self.tls_for if mode == "implicit" else None

    def proxy_preamble(
        self, client: ClientAddress | Callable[[], ClientAddress], route_version: str | None = None
    ) -> bytes:
        """The PROXY header telling the backend who C{client} is, or C{b""} when not asked for.

        @param client: the addresses, or what gives them (called only when a header is sent:
            the local address costs a system call).
        @param route_version: the route's C{backend_proxy_protocol}, which wins when given.
        """
        version = route_version or self.proxy_protocol
        if version not in ("v1", "v2"):
            return b""
        if callable(client):
            client = client()
        return encode_header(
            version, (client.ip, client.port), (client.local_ip, client.local_port)
        )
