"""The embedded router: the C{[[route]]} table from the configuration file.

It answers the same questions as the auth_http service, from the config alone, so a small site
needs no HTTP service at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed

from relaygate.config.routes import RouteConfig
from relaygate.config.server import PROTOCOLS
from relaygate.routing.router import Accept, AuthRequest, Decision, Refuse

# What the SMTP front sends for a recipient no route covers (Postfix says the same).
SMTP_UNROUTED: Refuse = Refuse("Relay access denied", smtp_code="550 5.7.1")
# What IMAP and POP3 clients see for a login whose domain no route covers.
LOGIN_UNROUTED: Refuse = Refuse("Authentication failed")


class TableRouter:
    """Route by protocol and domain using the C{[[route]]} entries.

    A route matches a request when its C{protocol} is the request's or ``"*"`` and its C{match}
    is the request's domain (case-insensitively) or ``"*"``. An exact domain always beats
    ``"*"``, wherever the routes stand in the file, so a catch-all can be written first; among
    routes of the same kind, the first in file order wins.
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        # Resolve the precedence once: a lookup is then one or two dict probes.
        self._exact: dict[tuple[str, str], Accept] = {}
        self._any: dict[str, Accept] = {}
        for protocol in PROTOCOLS:
            for route in routes:
                if route.protocol not in (protocol, "*"):
                    continue
                answer = Accept(
                    backends=route.backends,
                    backend_tls=route.backend_tls,
                    backend_proxy_protocol=route.backend_proxy_protocol,
                )
                if route.match == "*":
                    self._any.setdefault(protocol, answer)
                else:
                    self._exact.setdefault((protocol, route.match.lower()), answer)

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        """Answer at once: the matching route's backends, or a refusal for an unrouted domain."""
        decision: Decision | None = self._exact.get((request.protocol, request.domain()))
        if decision is None:
            decision = self._any.get(request.protocol)
        if decision is None:
            decision = SMTP_UNROUTED if request.protocol == "smtp" else LOGIN_UNROUTED
        return succeed(decision)
