"""The HTTP client under the auth_http router: treq on a lean keep-alive agent.

An auth lookup is one GET with headers the router built and checked, whose answer is in the
response headers. treq stays the client API, with two layers taken out from under it, both
measured with ``bench/profile`` (docs/performance.md):

 - treq's L{HTTPClient.request} wraps its agent in a cookie agent and a gzip content-decoding
   agent on every call (the latter copies the headers to add ``Accept-Encoding``); neither does
   anything for auth_http, and together they cost about 4 % of a small message's CPU.
   L{AuthHTTPClient} is treq's client with that one step skipped for the router's requests:
   what an upstream option ("no cookies, no decoding") would do.
 - Twisted's C{Agent} and C{HTTPConnectionPool} are replaced by L{LeanAgent}
   (L{relaygate.routing.http_agent}), a keep-alive HTTP/1.1 L{IAgent} that does only what a
   GET without a body needs; docs/auth-http.md says what it accepts and refuses.
"""

from __future__ import annotations

from typing import Any, Protocol

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.response import _Response
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.config.auth import AuthConfig
from relaygate.connect import client_endpoint
from relaygate.routing.http_agent import LeanAgent
from relaygate.tls.client import https_policy

# The keywords the router passes; any other request takes treq's full path.
_LEAN_KEYWORDS = frozenset(("headers", "allow_redirects", "unbuffered", "cookies"))


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


class ConnectionCache(Protocol):
    """What owns idle connections to close at shutdown (L{LeanAgent})."""

    def close_cached_connections(self) -> Deferred[None]:
        """Close the idle connections; fire when they are closed."""
        ...


class HTTPPoolService(Service):
    """Owns the router's persistent HTTP connections and closes them when the service stops."""

    def __init__(self, pool: ConnectionCache) -> None:
        self.pool = pool

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.pool.close_cached_connections()


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
    """An L{AuthHTTPClient} on a L{LeanAgent} on C{reactor}, and the service owning its pool.

    C{https://} services are verified against C{[auth] ca} (L{https_policy}).
    """
    agent = LeanAgent(reactor, _AuthEndpoints(reactor, https_policy(config.ca), config.timeout))
    return AuthHTTPClient(agent), HTTPPoolService(agent)
