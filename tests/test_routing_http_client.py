"""Tests for L{relaygate.routing.http_client}: treq without the wrappers auth_http never uses."""

from __future__ import annotations

from typing import Any

from hyperlink import EncodedURL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from relaygate.config.auth import AuthConfig
from relaygate.routing.http import HTTPRouter
from relaygate.routing.http_client import AuthHTTPClient, _AuthEndpoints, new_auth_client
from relaygate.routing.router import Accept, AuthRequest
from relaygate.tls.client import https_policy

REQUEST = AuthRequest(
    protocol="imap", client_ip="192.0.2.7", method="plain", user=b"bob", password=b"secret"
)
OK_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 192.0.2.10\r\n"
    b"Auth-Port: 143\r\nContent-Length: 0\r\n\r\n"
)


@implementer(IAgent)
class _RecordingAgent:
    """Remembers each request's arguments and never answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes, Headers | None]] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        body_producer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        self.requests.append((method, uri, headers))
        return Deferred()


class AuthHTTPClientTests(SynchronousTestCase):
    """The router's requests go to the agent as they are; other requests are treq's."""

    def test_router_request_reaches_agent_unwrapped(self) -> None:
        """The very Headers object goes to the agent, with no Accept-Encoding or Cookie."""
        agent = _RecordingAgent()
        headers = Headers({b"Auth-Method": [b"plain"]})
        AuthHTTPClient(agent).request(
            "GET",
            EncodedURL.from_text("http://127.0.0.1:9/auth"),
            headers=headers,
            allow_redirects=False,
            unbuffered=True,
        )
        [(method, uri, sent)] = agent.requests
        self.assertEqual((method, uri), (b"GET", b"http://127.0.0.1:9/auth"))
        self.assertIs(sent, headers)
        self.assertEqual(list(headers.getAllRawHeaders()), [(b"Auth-Method", [b"plain"])])

    def test_other_requests_take_treqs_path(self) -> None:
        """A request that follows redirects gets treq's agents (gzip decoding among them)."""
        agent = _RecordingAgent()
        AuthHTTPClient(agent).request("GET", "http://127.0.0.1:9/auth", headers=Headers())
        [(_, _, sent)] = agent.requests
        assert sent is not None
        self.assertEqual(sent.getRawHeaders(b"Accept-Encoding"), [b"gzip"])

    def test_request_bytes_on_the_wire(self) -> None:
        """Through a real Agent, the lookup is nginx's header list and nothing else."""
        reactor = MemoryReactorClock()
        pool = HTTPConnectionPool(reactor, persistent=True)
        endpoints = _AuthEndpoints(reactor, https_policy(""), 5.0)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
        router = HTTPRouter(
            AuthConfig(http=("http://127.0.0.1:8080/auth",)), AuthHTTPClient(agent), reactor
        )
        d = router.lookup(REQUEST)
        protocol = reactor.tcpClients[0][2].buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(
            transport.value(),
            b"GET /auth HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Auth-Method: plain\r\n"
            b"Auth-User: bob\r\n"
            b"Auth-Pass: secret\r\n"
            b"Auth-Protocol: imap\r\n"
            b"Auth-Login-Attempt: 1\r\n"
            b"Client-Ip: 192.0.2.7\r\n"
            b"\r\n",
        )
        protocol.dataReceived(OK_RESPONSE)
        self.assertIsInstance(self.successResultOf(d), Accept)


class EndpointTests(SynchronousTestCase):
    """One endpoint per configured URL, made once."""

    def test_endpoint_is_made_once_per_url(self) -> None:
        """Two requests to one URL share its endpoint; another port gets its own."""
        endpoints = _AuthEndpoints(MemoryReactorClock(), https_policy(""), 5.0)
        first = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8080/auth"))
        again = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8080/other"))
        other = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8081/auth"))
        self.assertIs(first, again)
        self.assertIsNot(first, other)


class NewAuthClientTests(SynchronousTestCase):
    """The client and the service that closes its pool."""

    def test_service_closes_the_pool(self) -> None:
        """Stopping the service closes the pool's idle connections."""
        client, service = new_auth_client(AuthConfig(http=("http://127.0.0.1:9/",)), _Reactor())
        self.assertIsInstance(client, AuthHTTPClient)
        closed: list[bool] = []

        def close() -> Deferred[None]:
            closed.append(True)
            return succeed(None)

        service.pool.close_cached_connections = close  # type: ignore[method-assign]
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(closed, [True])


class _Reactor(MemoryReactorClock):
    """A memory reactor that also passes for a name-resolving one."""

    nameResolver: Any = None
