"""The HTTP client under the auth_http router: treq on a keep-alive pool, doing only what it needs.

An auth lookup is one GET with headers the router built and checked, whose answer is in the
response headers. treq's L{HTTPClient.request} wraps its agent in a cookie agent and a gzip
content-decoding agent on every call (the latter copies the headers to add ``Accept-Encoding``);
neither does anything for auth_http, and together they cost about 4 % of a small message's CPU
(``bench/profile``). L{AuthHTTPClient} is treq's client with that one step skipped for the
router's requests: what an upstream option ("no cookies, no decoding") would do.
"""

from __future__ import annotations

from typing import Any

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.response import _Response
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.config.auth import AuthConfig
from relaygate.connect import client_endpoint
from relaygate.tls.client import https_policy

_MAX_IDLE_CONNECTIONS = 128
# The keywords the router passes; any other request takes treq's full path.
_LEAN_KEYWORDS = frozenset(("headers", "allow_redirects", "unbuffered", "cookies"))


class _AgentReactor(IReactorTCP, IReactorTime, IReactorPluggableNameResolver):
    """What L{Agent} needs from a reactor, for the type checker (as treq's C{_ITreqReactor})."""


class _NoCookies(IndexableCookieJar):
    """A cookie jar that neither sends nor keeps cookies (nginx keeps none between requests)."""

    @override
    def add_cookie_header(self, request: Any) -> None:
        pass

    @override
    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


class AuthHTTPClient(HTTPClient):
    """treq's L{HTTPClient} whose plain, unbuffered, non-redirecting requests skip the wrappers.

    Such a request goes straight to the agent with the caller's L{Headers} object as is: no
    cookie agent, no content decoding (auth_http answers are read from their headers; the body
    is discarded), no copy of the headers. Every other call is treq's own.
    """

    def __init__(self, agent: IAgent) -> None:
        super().__init__(agent, cookiejar=_NoCookies())
        self._lean_agent = agent

    @override
    def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[_Response]:
        headers = kwargs.get("headers")
        if (
            isinstance(url, EncodedURL)
            and kwargs.keys() <= _LEAN_KEYWORDS
            and kwargs.get("allow_redirects") is False
            and kwargs.get("unbuffered") is True
            and isinstance(headers, Headers)
            and not headers.hasHeader(b"cookie")
        ):
            # As treq does; the router's URLs cache their text (http._PreparedURL).
            target = url.to_uri().to_text().encode("ascii")
            sent = self._lean_agent.request(method.encode("ascii"), target, headers, None)
            return sent.addCallback(_Response, self._cookiejar)
        return super().request(method, url, **kwargs)


class HTTPPoolService(Service):
    """Owns the router's persistent HTTP connection pool and closes it when the service stops."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


@implementer(IAgentEndpointFactory)
class _AuthEndpoints:
    """Client endpoints for auth URLs, one per URL: an IP literal is connected to directly.

    Agent's own endpoints are L{HostnameEndpoint}s, which resolve even an IP literal through
    getaddrinfo in the reactor's thread pool: a thread round trip for every new pooled
    connection, and auth services are usually named by IP. The few configured URLs each get
    their endpoint once, not once per request.
    """

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = timeout
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """A TCP (or, for C{https}, TLS) endpoint for C{uri}'s host and port."""
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            host = uri.host.decode("idna").strip("[]")
            https = uri.scheme == b"https"
            tls = self._policy.creatorForNetloc(uri.host, uri.port) if https else None
            endpoint = client_endpoint(self._reactor, HostPort(host, uri.port), self._timeout, tls)
            self._endpoints[key] = endpoint
        return endpoint


def new_auth_client(config: AuthConfig, reactor: Any) -> tuple[HTTPClient, HTTPPoolService]:
    """An L{AuthHTTPClient} on C{reactor} with a keep-alive pool, and the service owning the pool.

    C{https://} services are verified against C{[auth] ca} (L{https_policy}).
    """
    typed_reactor: _AgentReactor = reactor
    pool = HTTPConnectionPool(typed_reactor, persistent=True)
    # Keep enough idle connections for a burst of concurrent lookups; more are closed after use.
    pool.maxPersistentPerHost = _MAX_IDLE_CONNECTIONS
    agent = Agent.usingEndpointFactory(
        typed_reactor,
        _AuthEndpoints(reactor, https_policy(config.ca), config.timeout),
        pool=pool,
    )
    return AuthHTTPClient(agent), HTTPPoolService(pool)
