"""Tests for L{relaygate.routing.http}: nginx's auth_http protocol over treq."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers as TwistedHeaders
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.config.auth import AuthConfig
from relaygate.routing.http import (
    HTTPRouter,
    escape_auth_value,
    new_http_router,
    parse_auth_server,
)
from relaygate.routing.http_request import (
    NGINX_NAMES,
    UnsendableError,
    configured_header,
    request_headers,
)
from relaygate.routing.raw_headers import canonical_name
from relaygate.routing.router import (
    Accept,
    AuthRequest,
    ClientTLS,
    Decision,
    ProxyAddresses,
    Refuse,
    RouterUnavailable,
)
from tests.authservice import hang, ok_to, refuse, start_auth_service
from tests.certs import PKI, make_pki

URL = "http://auth.example:8080/auth"
SMTP_REQUEST = AuthRequest(
    protocol="smtp",
    client_ip="192.0.2.7",
    client_port=51000,
    client_host="client.example",
    helo=b"client.example",
    mail_from=b"MAIL FROM:<alice@example.com> SIZE=1000",
    rcpt_to=b"RCPT TO:<bob@example.org>",
    recipient=b"bob@example.org",
)
IMAP_REQUEST = AuthRequest(
    protocol="imap",
    client_ip="192.0.2.7",
    method="plain",
    user=b"bob@example.org",
    password=b"secret",
)
NAMESPACE = "relaygate.routing.http.HTTPRouter"

Answer = dict[str, str] | int
Headers = list[tuple[bytes, list[bytes]]]


class _AuthResource(Resource):
    """An in-memory auth_http endpoint: records each request's headers, answers by a rule."""

    isLeaf = True

    def __init__(self, answer: Callable[[dict[bytes, bytes]], Answer]) -> None:
        super().__init__()
        self.answer = answer
        self.headers: list[Headers] = []
        self.uris: list[bytes] = []
        self.secure: list[bool] = []

    def render_GET(self, request: Request) -> bytes:
        # The in-memory agent's pool is not persistent: drop the header that adds.
        raw = [h for h in request.requestHeaders.getAllRawHeaders() if h[0] != b"Connection"]
        self.headers.append([(name, list(values)) for name, values in raw])
        self.uris.append(request.uri)
        self.secure.append(request.isSecure())
        answer = self.answer({name.lower(): values[-1] for name, values in raw})
        if isinstance(answer, int):
            request.setResponseCode(answer)
            return b"<html>error page</html>"
        for name, value in answer.items():
            request.setHeader(name.encode("latin-1"), value.encode("utf-8"))
        return b""


def _traversal(
    answer: Callable[[dict[bytes, bytes]], Answer] | Answer,
    urls: tuple[str, ...] = (URL,),
    **auth: Any,
) -> tuple[HTTPRouter, _AuthResource, RequestTraversalAgent, Clock]:
    """A router whose HTTP requests go to an in-memory L{_AuthResource}."""
    rule = answer if callable(answer) else (lambda headers: answer)
    resource = _AuthResource(rule)
    agent = RequestTraversalAgent(resource)
    clock = Clock()
    router = HTTPRouter(AuthConfig(http=urls, **auth), HTTPClient(agent), clock)
    return router, resource, agent, clock


def _ok(host: str = "192.0.2.10", port: str = "25", **extra: str) -> dict[str, str]:
    answer = {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": port}
    answer.update({name.replace("_", "-"): value for name, value in extra.items()})
    return answer


@contextmanager
def _router_events() -> Iterator[list[dict[str, Any]]]:
    """Collect the router's log events (and only those)."""
    with capturedLogs() as events:
        mine: list[dict[str, Any]] = []
        yield mine
    mine.extend(e for e in events if e.get("log_namespace") == NAMESPACE)


@implementer(IAgentEndpointFactory)
class _MemoryEndpoints:
    """Connect every URL to C{reactor.connectTCP}, so a test holds each connection."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, uri.host.decode("ascii"), uri.port)


class _Wire:
    """A router on a real L{Agent} and pool whose connections are L{StringTransport}s."""

    def __init__(self, urls: tuple[str, ...] = (URL,), **auth: Any) -> None:
        self.reactor = MemoryReactorClock()
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        agent = Agent.usingEndpointFactory(self.reactor, _MemoryEndpoints(self.reactor), pool=pool)
        config = AuthConfig(http=urls, **auth)
        self.router = HTTPRouter(config, HTTPClient(agent), self.reactor)

    def connect(self, index: int = -1) -> tuple[IProtocol, StringTransport]:
        """Complete the connection attempt C{index}; return its protocol and transport."""
        factory = self.reactor.tcpClients[index][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse(self, index: int = -1) -> None:
        """Fail the connection attempt C{index} as a refused connection."""
        factory = self.reactor.tcpClients[index][2]
        connector = self.reactor.connectors[index]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))


OK_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 192.0.2.10\r\n"
    b"Auth-Port: 25\r\nContent-Length: 0\r\n\r\n"
)


class EscapeTests(SynchronousTestCase):
    """nginx's NGX_ESCAPE_MAIL_AUTH for Auth-User, Auth-Pass and Auth-SSL-Cert."""

    def test_plain_value_is_unchanged(self) -> None:
        """A value without control bytes, space or % is sent as is (the same object)."""
        value = b"bob@example.org"
        self.assertIs(escape_auth_value(value), value)

    def test_space_percent_and_control_bytes_are_escaped(self) -> None:
        """Space, %, 0x00-0x1F (CR, LF, NUL included) become upper-case %XX."""
        self.assertEqual(escape_auth_value(b"a b%c\x00\x01\r\n\x1f"), b"a%20b%25c%00%01%0D%0A%1F")

    def test_utf8_and_del_pass_through(self) -> None:
        """UTF-8 bytes, DEL and other punctuation are not escaped, as in nginx."""
        value = "pässwörd+=/?&\x7f".encode()
        self.assertEqual(escape_auth_value(value), value)


class ParseAuthServerTests(SynchronousTestCase):
    """Which Auth-Server values name a backend host."""

    def test_addresses_and_names(self) -> None:
        """IPv4, IPv6 (bare or bracketed) and host names are accepted."""
        self.assertEqual(parse_auth_server("192.0.2.10"), "192.0.2.10")
        self.assertEqual(parse_auth_server("2001:db8::1"), "2001:db8::1")
        self.assertEqual(parse_auth_server("[2001:db8::1]"), "2001:db8::1")
        self.assertEqual(parse_auth_server("mail-1.example.org"), "mail-1.example.org")
        self.assertEqual(parse_auth_server("localhost"), "localhost")

    def test_garbage_is_refused(self) -> None:
        """Anything else is not a host: spaces, ports, bad labels, numeric non-addresses."""
        for text in ("", "a b", "host:25", "-bad.example", "1.2.3", "999.1.1.1", "a..b", "é.fr"):
            self.assertIsNone(parse_auth_server(text), text)


class RequestHeaderTests(SynchronousTestCase):
    """The request carries nginx's headers, in nginx's order, with nginx's escaping."""

    def lookup_headers(self, request: AuthRequest, **auth: Any) -> Headers:
        router, resource, agent, _ = _traversal(_ok(Auth_Pass="backend"), **auth)
        d = router.lookup(request)
        agent.flush()
        self.successResultOf(d)
        [headers] = resource.headers
        return headers

    def test_smtp_none_sends_full_command_lines(self) -> None:
        """SMTP without AUTH sends Auth-Method none and the HELO, MAIL and RCPT lines."""
        self.assertEqual(
            self.lookup_headers(SMTP_REQUEST),
            [
                (b"Host", [b"auth.example"]),
                (b"Auth-Method", [b"none"]),
                (b"Auth-User", [b""]),
                (b"Auth-Pass", [b""]),
                (b"Auth-Protocol", [b"smtp"]),
                (b"Auth-Login-Attempt", [b"1"]),
                (b"Client-Ip", [b"192.0.2.7"]),
                (b"Client-Host", [b"client.example"]),
                (b"Auth-Smtp-Helo", [b"client.example"]),
                (b"Auth-Smtp-From", [b"MAIL FROM:<alice@example.com> SIZE=1000"]),
                (b"Auth-Smtp-To", [b"RCPT TO:<bob@example.org>"]),
                (b"Accept-Encoding", [b"gzip"]),
            ],
        )

    def test_imap_plain_escapes_credentials(self) -> None:
        """IMAP LOGIN sends plain, the escaped user and password, no SMTP headers."""
        request = AuthRequest(
            protocol="imap",
            client_ip="2001:db8::7",
            method="login",
            user=b"bob smith@example.org",
            password=b"p%ss word",
            attempt=2,
        )
        self.assertEqual(
            self.lookup_headers(request),
            [
                (b"Host", [b"auth.example"]),
                (b"Auth-Method", [b"plain"]),
                (b"Auth-User", [b"bob%20smith@example.org"]),
                (b"Auth-Pass", [b"p%25ss%20word"]),
                (b"Auth-Protocol", [b"imap"]),
                (b"Auth-Login-Attempt", [b"2"]),
                (b"Client-Ip", [b"2001:db8::7"]),
                (b"Accept-Encoding", [b"gzip"]),
            ],
        )

    def test_pop3_apop_sends_salt_after_pass(self) -> None:
        """APOP sends the digest as Auth-Pass and the greeting's timestamp as Auth-Salt."""
        request = AuthRequest(
            protocol="pop3",
            client_ip="192.0.2.7",
            method="apop",
            user=b"bob",
            password=b"c4c9334bac560ecc979e58001b3e22fb",
            salt=b"<1896.697170952@dbc.mtview.ca.us>\r\n",
        )
        self.assertEqual(
            self.lookup_headers(request)[1:6],
            [
                (b"Auth-Method", [b"apop"]),
                (b"Auth-User", [b"bob"]),
                (b"Auth-Pass", [b"c4c9334bac560ecc979e58001b3e22fb"]),
                (b"Auth-Salt", [b"<1896.697170952@dbc.mtview.ca.us>"]),
                (b"Auth-Protocol", [b"pop3"]),
            ],
        )

    def test_cram_md5_sends_salt(self) -> None:
        """CRAM-MD5 sends its challenge as Auth-Salt."""
        request = AuthRequest(
            protocol="imap",
            client_ip="192.0.2.7",
            method="cram-md5",
            user=b"bob",
            password=b"b913a602c7eda7a495b4e6e7334d3890",
            salt=b"<12345.67@mail.example>",
        )
        headers = dict(self.lookup_headers(request))
        self.assertEqual(headers[b"Auth-Method"], [b"cram-md5"])
        self.assertEqual(headers[b"Auth-Salt"], [b"<12345.67@mail.example>"])

    def test_salt_only_for_apop_and_cram_md5(self) -> None:
        """A salt given with another method is not sent (nginx sends it for those two only)."""
        request = AuthRequest(protocol="imap", client_ip="192.0.2.7", method="plain", salt=b"<x>")
        self.assertNotIn(b"Auth-Salt", dict(self.lookup_headers(request)))

    def test_utf8_credentials_pass_through(self) -> None:
        """UTF-8 in the user and password is sent unescaped."""
        request = AuthRequest(
            protocol="imap",
            client_ip="192.0.2.7",
            method="plain",
            user="jürgen@example.de".encode(),
            password="pässwort".encode(),
        )
        headers = dict(self.lookup_headers(request))
        self.assertEqual(headers[b"Auth-User"], ["jürgen@example.de".encode()])
        self.assertEqual(headers[b"Auth-Pass"], ["pässwort".encode()])

    def test_ssl_headers(self) -> None:
        """A TLS client adds Auth-SSL and its details; the certificate only when asked for."""
        tls = ClientTLS(
            protocol="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            verify="SUCCESS",
            subject="CN=client,O=Example",
            issuer="CN=Example CA",
            serial="1A2B",
            fingerprint="0123abcd",
            certificate_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        request = AuthRequest(protocol="imap", client_ip="192.0.2.7", method="external", tls=tls)
        headers = self.lookup_headers(request, pass_client_cert=True)
        self.assertEqual(
            headers[7:-1],
            [
                (b"Auth-Ssl", [b"on"]),
                (b"Auth-Ssl-Protocol", [b"TLSv1.3"]),
                (b"Auth-Ssl-Cipher", [b"TLS_AES_256_GCM_SHA384"]),
                (b"Auth-Ssl-Verify", [b"SUCCESS"]),
                (b"Auth-Ssl-Subject", [b"CN=client,O=Example"]),
                (b"Auth-Ssl-Issuer", [b"CN=Example CA"]),
                (b"Auth-Ssl-Serial", [b"1A2B"]),
                (b"Auth-Ssl-Fingerprint", [b"0123abcd"]),
                (
                    b"Auth-Ssl-Cert",
                    [b"-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A"],
                ),
            ],
        )
        self.assertNotIn(b"Auth-Ssl-Cert", dict(self.lookup_headers(request)))

    def test_ssl_headers_skip_empty_details(self) -> None:
        """Empty TLS details are left out, as nginx does without client verification."""
        tls = ClientTLS(protocol="TLSv1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256", verify="")
        request = AuthRequest(protocol="smtp", client_ip="192.0.2.7", method="plain", tls=tls)
        names = [name for name, _ in self.lookup_headers(request)]
        self.assertEqual(
            names[-4:], [b"Auth-Ssl", b"Auth-Ssl-Protocol", b"Auth-Ssl-Cipher", b"Accept-Encoding"]
        )

    def test_proxy_protocol_headers(self) -> None:
        """PROXY protocol addresses follow Client-IP/Client-Host, before the SMTP headers."""
        proxy = ProxyAddresses("203.0.113.9", 40000, "198.51.100.1", 25)
        request = AuthRequest(protocol="smtp", client_ip="203.0.113.9", proxy=proxy)
        self.assertEqual(
            self.lookup_headers(request)[7:11],
            [
                (b"Proxy-Protocol-Addr", [b"203.0.113.9"]),
                (b"Proxy-Protocol-Port", [b"40000"]),
                (b"Proxy-Protocol-Server-Addr", [b"198.51.100.1"]),
                (b"Proxy-Protocol-Server-Port", [b"25"]),
            ],
        )

    def test_static_headers_come_last(self) -> None:
        """Configured headers are sent after nginx's own, in configured order."""
        headers = self.lookup_headers(
            IMAP_REQUEST, headers=(("X-Auth-Key", "s3cret"), ("X-Site", "eu-1"))
        )
        self.assertEqual(headers[-3:-1], [(b"X-Auth-Key", [b"s3cret"]), (b"X-Site", [b"eu-1"])])

    def test_static_host_replaces_url_host(self) -> None:
        """A configured Host header is sent instead of the URL's host, not as a second one."""
        headers = self.lookup_headers(IMAP_REQUEST, headers=(("host", "auth.internal"),))
        self.assertEqual(headers[0], (b"Host", [b"auth.internal"]))
        self.assertEqual([name for name, _ in headers].count(b"Host"), 1)

    def test_framing_headers_are_refused(self) -> None:
        """Static headers that would break HTTP framing are refused when the router is built."""
        for name in ("Content-Length", "transfer-encoding", "Connection"):
            with self.assertRaises(ValueError):
                _traversal(_ok(), headers=((name, "1"),))

    def test_url_path_and_query_are_kept(self) -> None:
        """The configured path and query string are requested as written."""
        router, resource, agent, _ = _traversal(_ok(), urls=("http://auth.example/a/b?k=v%20w",))
        router.lookup(IMAP_REQUEST)
        agent.flush()
        self.assertEqual(resource.uris, [b"/a/b?k=v%20w"])

    def test_https_url(self) -> None:
        """An https:// URL is requested over TLS, with the host (no port) as Host."""
        router, resource, agent, _ = _traversal(_ok(), urls=("https://auth.example:8443/auth",))
        d = router.lookup(IMAP_REQUEST)
        agent.flush()
        self.assertIsInstance(self.successResultOf(d), Accept)
        self.assertEqual(resource.secure, [True])
        self.assertEqual(resource.headers[0][0], (b"Host", [b"auth.example"]))

    def test_cr_lf_nul_are_never_sent(self) -> None:
        """A header that would carry CR, LF or NUL fails the lookup before any request."""
        bad = [
            AuthRequest(protocol="smtp", client_ip="192.0.2.7", rcpt_to=b"RCPT TO:<a@b>\r\nX: y"),
            AuthRequest(protocol="smtp", client_ip="192.0.2.7", helo=b"a\nb"),
            AuthRequest(protocol="smtp", client_ip="192.0.2.7", mail_from=b"MAIL FROM:<\0>"),
            AuthRequest(protocol="smtp", client_ip="192.0.2.7", client_host="a\rb"),
        ]
        for request in bad:
            router, resource, agent, _ = _traversal(_ok())
            with _router_events() as events:
                d = router.lookup(request)
                agent.flush()
            self.failureResultOf(d, RouterUnavailable)
            self.assertEqual(resource.headers, [])
            [event] = events
            self.assertEqual(event["log_level"], LogLevel.error)
            self.assertEqual(event["problem"], "unsendable")

    def test_unknown_method_is_not_sent(self) -> None:
        """An Auth-Method nginx has no name for fails the lookup."""
        router, resource, _, _ = _traversal(_ok())
        d = router.lookup(AuthRequest(protocol="smtp", client_ip="192.0.2.7", method="gssapi"))
        self.failureResultOf(d, RouterUnavailable)
        self.assertEqual(resource.headers, [])


class WireTests(SynchronousTestCase):
    """The exact bytes on the connection, keep-alive, and what a broken server does."""

    def test_request_bytes(self) -> None:
        """The request is one GET with nginx's headers in nginx's order."""
        wire = _Wire()
        d = wire.router.lookup(IMAP_REQUEST)
        _, transport = wire.connect()
        self.assertEqual(
            transport.value(),
            b"GET /auth HTTP/1.1\r\n"
            b"Host: auth.example\r\n"
            b"Auth-Method: plain\r\n"
            b"Auth-User: bob@example.org\r\n"
            b"Auth-Pass: secret\r\n"
            b"Auth-Protocol: imap\r\n"
            b"Auth-Login-Attempt: 1\r\n"
            b"Client-Ip: 192.0.2.7\r\n"
            b"Accept-Encoding: gzip\r\n"
            b"\r\n",
        )
        self.assertNoResult(d)

    def test_connection_is_reused(self) -> None:
        """After a complete answer, the next lookup goes over the same connection."""
        wire = _Wire()
        first = wire.router.lookup(IMAP_REQUEST)
        protocol, transport = wire.connect()
        protocol.dataReceived(OK_RESPONSE)
        self.assertIsInstance(self.successResultOf(first), Accept)
        transport.clear()
        second = wire.router.lookup(SMTP_REQUEST)
        self.assertEqual(len(wire.reactor.tcpClients), 1)
        self.assertTrue(transport.value().startswith(b"GET /auth HTTP/1.1\r\n"))
        protocol.dataReceived(OK_RESPONSE)
        self.assertIsInstance(self.successResultOf(second), Accept)

    def test_body_is_read_and_discarded(self) -> None:
        """A body is read to its end before answering, so the connection can serve again."""
        wire = _Wire()
        d = wire.router.lookup(IMAP_REQUEST)
        protocol, transport = wire.connect()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 192.0.2.10\r\n"
            b"Auth-Port: 143\r\nContent-Length: 10\r\n\r\n12345"
        )
        self.assertNoResult(d)
        protocol.dataReceived(b"67890")
        self.assertEqual(self.successResultOf(d).backends, (HostPort("192.0.2.10", 143),))  # type: ignore[union-attr]
        self.assertFalse(transport.disconnecting)

    def test_huge_body_drops_connection_but_answers(self) -> None:
        """A body over 64 KiB is not read: the connection is dropped, the headers still count."""
        wire = _Wire()
        d = wire.router.lookup(IMAP_REQUEST)
        protocol, transport = wire.connect()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 192.0.2.10\r\n"
            b"Auth-Port: 143\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000
        )
        # Stopping a TCP transport's production closes it.
        self.assertEqual(transport.producerState, "stopped")
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.successResultOf(d), Accept)

    def test_timeout(self) -> None:
        """No answer within [auth] timeout fails the lookup, on the injected clock."""
        wire = _Wire(timeout=2.5)
        with _router_events() as events:
            d = wire.router.lookup(IMAP_REQUEST)
            wire.connect()
            wire.reactor.advance(2.4)
            self.assertNoResult(d)
            wire.reactor.advance(0.1)
        self.failureResultOf(d, RouterUnavailable)
        [event] = events
        self.assertEqual((event["log_level"], event["problem"]), (LogLevel.error, "timeout"))
        self.assertEqual(event["url"], URL)

    def test_garbage_response(self) -> None:
        """Bytes that are not HTTP fail the lookup."""
        wire = _Wire()
        with _router_events() as events:
            d = wire.router.lookup(IMAP_REQUEST)
            protocol, _ = wire.connect()
            protocol.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, RouterUnavailable)
        [event] = events
        self.assertEqual(event["problem"], "bad-response")

    def test_overlong_header_line(self) -> None:
        """A header line longer than the HTTP parser's limit fails the lookup."""
        wire = _Wire()
        d = wire.router.lookup(IMAP_REQUEST)
        protocol, transport = wire.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nAuth-Status: " + b"x" * 70000 + b"\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, RouterUnavailable)

    def test_header_without_colon(self) -> None:
        """A header line without a colon is garbage."""
        wire = _Wire()
        d = wire.router.lookup(IMAP_REQUEST)
        protocol, _ = wire.connect()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nAuth-Status OK\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, RouterUnavailable)

    def test_control_bytes_in_status_text(self) -> None:
        """A failure text with control bytes is not shown to a client."""
        wire = _Wire()
        with _router_events() as events:
            d = wire.router.lookup(IMAP_REQUEST)
            protocol, _ = wire.connect()
            protocol.dataReceived(
                b"HTTP/1.1 200 OK\r\nAuth-Status: bad\x00text\r\nContent-Length: 0\r\n\r\n"
            )
        self.failureResultOf(d, RouterUnavailable)
        [event] = events
        self.assertEqual((event["header"], event["value"]), ("Auth-Status", b"bad\x00text"))

    def test_http_10_without_length(self) -> None:
        """An HTTP/1.0 answer whose body ends with the connection works (nginx's own style)."""
        wire = _Wire()
        d = wire.router.lookup(IMAP_REQUEST)
        protocol, _ = wire.connect()
        protocol.dataReceived(
            b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n"
            b"Auth-Server: 192.0.2.10\r\nAuth-Port: 143\r\n\r\n"
        )
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.successResultOf(d), Accept)

    def test_failover_on_refused_connection(self) -> None:
        """A refused connection moves on to the next URL, with a warning."""
        wire = _Wire(urls=(URL, "http://auth2.example:8081/auth"))
        with _router_events() as events:
            d = wire.router.lookup(IMAP_REQUEST)
            wire.refuse(0)
            protocol, transport = wire.connect(1)
            self.assertIn(b"\r\nHost: auth2.example\r\n", transport.value())
            protocol.dataReceived(OK_RESPONSE)
        self.assertIsInstance(self.successResultOf(d), Accept)
        [event] = events
        self.assertEqual((event["log_level"], event["problem"]), (LogLevel.warn, "unreachable"))

    def test_failover_on_timeout(self) -> None:
        """A URL that times out moves on to the next, which gets a full timeout of its own."""
        wire = _Wire(urls=(URL, "http://auth2.example:8081/auth"), timeout=1.0)
        d = wire.router.lookup(IMAP_REQUEST)
        wire.connect(0)
        wire.reactor.advance(1.0)
        self.assertEqual(len(wire.reactor.tcpClients), 2)
        protocol, _ = wire.connect(1)
        wire.reactor.advance(0.9)
        protocol.dataReceived(OK_RESPONSE)
        self.assertIsInstance(self.successResultOf(d), Accept)

    def test_all_urls_unreachable(self) -> None:
        """When every URL fails, the lookup fails: one warning per URL, an error for the last."""
        wire = _Wire(urls=(URL, "http://auth2.example:8081/auth"))
        with _router_events() as events:
            d = wire.router.lookup(IMAP_REQUEST)
            wire.refuse(0)
            wire.refuse(1)
        self.failureResultOf(d, RouterUnavailable)
        self.assertEqual(
            [(e["log_level"], e["url"]) for e in events],
            [(LogLevel.warn, URL), (LogLevel.error, "http://auth2.example:8081/auth")],
        )

    def test_cancel_aborts_request(self) -> None:
        """Cancelling a lookup (the client left) drops the pending HTTP request."""
        wire = _Wire()
        d = wire.router.lookup(IMAP_REQUEST)
        _, transport = wire.connect()
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(transport.disconnecting or transport.disconnected)


class RequestHeadersTests(SynchronousTestCase):
    """The headers are handed over pre-built: exactly what Twisted's public API would build."""

    def test_names_are_canonical(self) -> None:
        """Every header of the fullest request is stored as Headers.addRawHeader would."""
        tls = ClientTLS(
            protocol="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            verify="SUCCESS",
            subject="CN=client",
            issuer="CN=CA",
            serial="1A",
            fingerprint="01ab",
            certificate_pem="PEM",
        )
        request = AuthRequest(
            protocol="smtp",
            client_ip="192.0.2.7",
            client_host="client.example",
            helo=b"client.example",
            mail_from=b"MAIL FROM:<a@example.com>",
            rcpt_to=b"RCPT TO:<b@example.org>",
            tls=tls,
            proxy=ProxyAddresses("203.0.113.9", 40000, "198.51.100.1", 25),
        )
        static = (configured_header("x-auth-key", "k"), configured_header("Auth-User", "again"))
        built = request_headers(request, b"auth.example", static, pass_client_cert=True)
        public = TwistedHeaders()
        for name, values in built.getAllRawHeaders():
            for value in values:
                public.addRawHeader(name.lower(), value)
        self.assertEqual(list(built.getAllRawHeaders()), list(public.getAllRawHeaders()))
        self.assertEqual(built.getRawHeaders(b"auth-user"), [b"", b"again"])
        self.assertEqual(len(list(built.getAllRawHeaders())), 25)

    def test_apop_salt_is_canonical(self) -> None:
        """The APOP salt goes after Auth-Pass, under the name Headers uses."""
        request = AuthRequest(
            protocol="pop3", client_ip="192.0.2.7", method="apop", salt=b"<1.2@host>\r\n"
        )
        built = request_headers(request, b"auth.example")
        self.assertEqual(
            [name for name, _ in built.getAllRawHeaders()][3:6],
            [b"Auth-Pass", b"Auth-Salt", b"Auth-Protocol"],
        )

    def test_unsendable_header_is_named_as_nginx_names_it(self) -> None:
        """The log event names the header in nginx's spelling."""
        request = AuthRequest(protocol="smtp", client_ip="192.0.2.7", helo=b"bad\rhelo")
        with self.assertRaises(UnsendableError) as caught:
            request_headers(request, b"auth.example")
        self.assertEqual(caught.exception.header, "Auth-SMTP-Helo")
        self.assertEqual(
            sorted(canonical_name(name.encode()) for name in NGINX_NAMES)[:3],
            [b"Auth-Salt", b"Auth-Smtp-From", b"Auth-Smtp-Helo"],
        )


class CancelTests(SynchronousTestCase):
    """A cancelled lookup (the client left) stops where it is."""

    def test_cancel_asks_no_further_url(self) -> None:
        """Cancelling drops the request in flight, logs nothing and asks no other URL."""
        wire = _Wire(urls=(URL, "http://auth2.example:8081/auth"))
        with _router_events() as events:
            d = wire.router.lookup(IMAP_REQUEST)
            protocol, _ = wire.connect(0)
            d.cancel()
            protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, CancelledError)
        self.assertEqual((len(wire.reactor.tcpClients), events), (1, []))


class AnswerTests(SynchronousTestCase):
    """How each kind of answer becomes a decision, as nginx reads it."""

    def decide(
        self,
        answer: Callable[[dict[bytes, bytes]], Answer] | Answer,
        request: AuthRequest = SMTP_REQUEST,
    ) -> Decision:
        router, _, agent, _ = _traversal(answer)
        d = router.lookup(request)
        agent.flush()
        return self.successResultOf(d)

    def unavailable(
        self, answer: Answer, request: AuthRequest = SMTP_REQUEST
    ) -> list[dict[str, Any]]:
        router, _, agent, _ = _traversal(answer)
        with _router_events() as events:
            d = router.lookup(request)
            agent.flush()
        self.failureResultOf(d, RouterUnavailable)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.error)
        return events

    def test_ok_with_ip(self) -> None:
        """OK with an IPv4 Auth-Server routes there, without rewriting the login."""
        self.assertEqual(
            self.decide(_ok("192.0.2.10", "25")),
            Accept(backends=(HostPort("192.0.2.10", 25),), user=None, password=None),
        )

    def test_ok_with_ipv6(self) -> None:
        """OK with an IPv6 Auth-Server (bare, as nginx expects, or bracketed)."""
        for server in ("2001:db8::1", "[2001:db8::1]"):
            decision = self.decide(_ok(server, "587"))
            self.assertEqual(decision.backends, (HostPort("2001:db8::1", 587),))  # type: ignore[union-attr]

    def test_ok_with_host_name(self) -> None:
        """OK with a host name routes there (relaygate's extension; nginx wants an IP)."""
        decision = self.decide(_ok("mx1.example.org", "2525"))
        self.assertEqual(decision.backends, (HostPort("mx1.example.org", 2525),))  # type: ignore[union-attr]

    def test_ok_rewrites_login(self) -> None:
        """Auth-User and Auth-Pass in an OK answer replace the login at the backend."""
        decision = self.decide(_ok(Auth_User="bob%real", Auth_Pass="backend secret"), IMAP_REQUEST)
        self.assertEqual(
            (decision.user, decision.password),  # type: ignore[union-attr]
            (b"bob%real", b"backend secret"),
        )

    def test_status_code_is_ignored(self) -> None:
        """A 404 with a valid OK answer is still an OK, as nginx ignores the status line."""
        wire = _Wire()
        d = wire.router.lookup(SMTP_REQUEST)
        protocol, _ = wire.connect()
        protocol.dataReceived(OK_RESPONSE.replace(b"200 OK", b"404 Not Found"))
        self.assertIsInstance(self.successResultOf(d), Accept)

    def test_refusal(self) -> None:
        """Any other Auth-Status text is a refusal shown to the client, closing the session."""
        self.assertEqual(
            self.decide({"Auth-Status": "Invalid login or password"}),
            Refuse("Invalid login or password", smtp_code="", wait=None),
        )

    def test_refusal_with_error_code_and_wait(self) -> None:
        """Auth-Error-Code replaces SMTP's 535 5.7.0; Auth-Wait delays the reply."""
        self.assertEqual(
            self.decide(
                {"Auth-Status": "Relay denied", "Auth-Error-Code": "550 5.7.1", "Auth-Wait": "3"}
            ),
            Refuse("Relay denied", smtp_code="550 5.7.1", wait=3.0),
        )

    def test_refusal_wait_zero_or_invalid(self) -> None:
        """Auth-Wait 0 or not a number means no wait, as nginx's ngx_atoi reads it."""
        for wait in ("0", "x", "-1", "1.5", ""):
            decision = self.decide({"Auth-Status": "No", "Auth-Wait": wait})
            self.assertEqual(decision, Refuse("No"), wait)

    def test_refusal_utf8_text(self) -> None:
        """A failure text is decoded as UTF-8."""
        decision = self.decide({"Auth-Status": "Zugriff verweigert für Sie"})
        self.assertEqual(decision, Refuse("Zugriff verweigert für Sie"))

    def test_refusal_beats_ok(self) -> None:
        """A failure text anywhere wins over an OK, as in nginx."""
        wire = _Wire()
        d = wire.router.lookup(SMTP_REQUEST)
        protocol, _ = wire.connect()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nAuth-Status: Denied\r\nAuth-Status: OK\r\n"
            b"Auth-Server: 192.0.2.10\r\nAuth-Port: 25\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(self.successResultOf(d), Refuse("Denied"))

    def test_wait_asks_again(self) -> None:
        """Auth-Status WAIT sends the same request again after Auth-Wait seconds."""
        answers = [{"Auth-Status": "WAIT", "Auth-Wait": "2"}, _ok()]
        router, resource, agent, clock = _traversal(lambda headers: answers.pop(0))
        d = router.lookup(IMAP_REQUEST)
        agent.flush()
        self.assertNoResult(d)
        clock.advance(1.9)
        agent.flush()
        self.assertNoResult(d)
        clock.advance(0.1)
        agent.flush()
        self.assertIsInstance(self.successResultOf(d), Accept)
        self.assertEqual(resource.headers[0], resource.headers[1])

    def test_wait_forever_gives_up(self) -> None:
        """A service that answers WAIT again and again ends in RouterUnavailable."""
        router, resource, agent, clock = _traversal({"Auth-Status": "WAIT"})
        with _router_events() as events:
            d = router.lookup(IMAP_REQUEST)
            for _ in range(20):
                agent.flush()
                clock.advance(0)
        self.failureResultOf(d, RouterUnavailable)
        self.assertEqual(len(resource.headers), 11)
        self.assertEqual([e["problem"] for e in events], ["too-many-waits"])

    def test_missing_server_or_port(self) -> None:
        """OK without Auth-Server or Auth-Port is an error, as in nginx."""
        for answer in (
            {"Auth-Status": "OK", "Auth-Port": "25"},
            {"Auth-Status": "OK", "Auth-Server": "192.0.2.10"},
            {"Auth-Status": "OK", "Auth-Server": "", "Auth-Port": "25"},
        ):
            [event] = self.unavailable(answer)
            self.assertEqual(event["problem"], "did not send server or port")

    def test_bad_port(self) -> None:
        """Auth-Port must be 1-65535 in digits."""
        for port in ("0", "65536", "25a", "+25", "99999999999999999999"):
            [event] = self.unavailable(_ok(port=port))
            self.assertEqual((event["header"], event["value"]), ("Auth-Port", port.encode()))

    def test_bad_server(self) -> None:
        """Auth-Server must be an address or a host name."""
        [event] = self.unavailable(_ok(host="not a host"))
        self.assertEqual((event["header"], event["value"]), ("Auth-Server", b"not a host"))

    def test_missing_status_with_server_routes(self) -> None:
        """Auth-Server and Auth-Port without Auth-Status route, as in nginx (the seed setup)."""
        self.assertEqual(
            self.decide({"Auth-Server": "127.0.0.1", "Auth-Port": "25"}),
            Accept(backends=(HostPort("127.0.0.1", 25),), user=None, password=None),
        )

    def test_missing_status_without_server(self) -> None:
        """An answer with no Auth-* header at all (an error page, a wrong URL) is an error."""
        [event] = self.unavailable({})
        self.assertEqual(event["problem"], "did not send server or port")

    def test_bad_error_code(self) -> None:
        """An Auth-Error-Code that is not an SMTP reply code is an error."""
        [event] = self.unavailable({"Auth-Status": "No", "Auth-Error-Code": "oops"})
        self.assertEqual(event["header"], "Auth-Error-Code")

    def test_password_required_after_apop(self) -> None:
        """After APOP there is no client password: OK must carry Auth-Pass (nginx's rule)."""
        apop = AuthRequest(
            protocol="pop3", client_ip="192.0.2.7", method="apop", user=b"bob", salt=b"<1@x>"
        )
        [event] = self.unavailable(_ok(), apop)
        self.assertEqual(event["problem"], "did not send password")
        decision = self.decide(_ok(Auth_Pass="real"), apop)
        self.assertEqual(decision.password, b"real")  # type: ignore[union-attr]

    def test_password_never_logged(self) -> None:
        """A rejected Auth-Pass value does not reach a log event."""
        [event] = self.unavailable(_ok(Auth_Pass="x" * 5000), IMAP_REQUEST)
        self.assertNotIn("xxxx", repr(event))
        self.assertEqual(event["header"], "Auth-Pass")

    def test_http_500(self) -> None:
        """HTTP 5xx is a temporary failure (nginx would read the headers)."""
        router, _, agent, _ = _traversal(500)
        with _router_events() as events:
            d = router.lookup(SMTP_REQUEST)
            agent.flush()
        self.failureResultOf(d, RouterUnavailable)
        [event] = events
        self.assertEqual((event["problem"], event["code"]), ("http-5xx", 500))

    def test_failover_on_500(self) -> None:
        """A 5xx moves on to the next URL."""

        def by_host(headers: dict[bytes, bytes]) -> Answer:
            return 503 if headers[b"host"] == b"auth.example" else _ok()

        router, resource, agent, _ = _traversal(by_host, urls=(URL, "http://auth2.example/auth"))
        d = router.lookup(SMTP_REQUEST)
        agent.flush()
        self.assertIsInstance(self.successResultOf(d), Accept)
        self.assertEqual(
            [dict(h)[b"Host"] for h in resource.headers], [[b"auth.example"], [b"auth2.example"]]
        )

    def test_wait_after_failover_starts_again_at_the_first_url(self) -> None:
        """A WAIT round after a failover asks the first URL again, with its own Host."""
        answers: list[Answer] = [503, {"Auth-Status": "WAIT"}, _ok()]
        router, resource, agent, clock = _traversal(
            lambda headers: answers.pop(0), urls=(URL, "http://auth2.example/auth")
        )
        d = router.lookup(SMTP_REQUEST)
        agent.flush()
        clock.advance(0)
        agent.flush()
        self.assertIsInstance(self.successResultOf(d), Accept)
        self.assertEqual(
            [dict(h)[b"Host"] for h in resource.headers],
            [[b"auth.example"], [b"auth2.example"], [b"auth.example"]],
        )

    def test_cancel_during_wait_asks_no_more(self) -> None:
        """A lookup cancelled while it waits to ask again never asks again."""
        router, resource, agent, clock = _traversal({"Auth-Status": "WAIT", "Auth-Wait": "5"})
        d = router.lookup(SMTP_REQUEST)
        agent.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        clock.advance(10)
        agent.flush()
        self.assertEqual((len(resource.headers), clock.getDelayedCalls()), (1, []))

    def test_no_failover_on_bad_answer(self) -> None:
        """A well-formed but unusable answer fails at once: the next URL runs the same code."""
        router, resource, agent, _ = _traversal(
            {"Auth-Status": "OK"}, urls=(URL, "http://auth2.example/auth")
        )
        d = router.lookup(SMTP_REQUEST)
        agent.flush()
        self.failureResultOf(d, RouterUnavailable)
        self.assertEqual(len(resource.headers), 1)


class ProgrammingErrorTests(SynchronousTestCase):
    """A bug under the lookup is logged with its traceback and is not a reason to fail over."""

    def test_bug_is_logged_and_not_failed_over(self) -> None:
        """An unexpected exception gives RouterUnavailable at once, logged as a failure."""
        asked: list[bytes] = []

        @implementer(IAgent)
        class _BuggyAgent:
            def request(self, method: bytes, uri: bytes, *args: object) -> Deferred[IResponse]:
                asked.append(uri)
                raise ZeroDivisionError("a bug")

        router = HTTPRouter(
            AuthConfig(http=(URL, "http://auth2.example/auth")),
            HTTPClient(_BuggyAgent()),
            Clock(),
        )
        with _router_events() as events:
            d = router.lookup(SMTP_REQUEST)
        self.failureResultOf(d, RouterUnavailable)
        self.assertEqual(asked, [URL.encode("ascii")])
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertEqual(event["url"], URL)
        self.assertIsInstance(event["log_failure"].value, ZeroDivisionError)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_transport_error_still_fails_over(self) -> None:
        """A connection lost before the answer is the service's fault: the next URL is asked."""
        wire = _Wire(urls=(URL, "http://auth2.example:8081/auth"))
        with _router_events() as events:
            d = wire.router.lookup(IMAP_REQUEST)
            first, _ = wire.connect(0)
            first.connectionLost(Failure(ConnectionDone()))
            second, _ = wire.connect(1)
            second.dataReceived(OK_RESPONSE)
        self.assertIsInstance(self.successResultOf(d), Accept)
        self.assertEqual([e["problem"] for e in events], ["bad-response"])


class IntegrationTests(TestCase):
    """The router against the real auth service in L{tests.authservice}, over loopback."""

    async def router(self, url: str) -> HTTPRouter:
        from twisted.internet import reactor

        router, service = new_http_router(AuthConfig(http=(url,), timeout=5.0), reactor)
        self.addCleanup(service.stopService)
        return router

    async def test_lookup(self) -> None:
        """A lookup reaches the service and routes as it answered."""
        auth = await start_auth_service(self, ok_to("127.0.0.1", 2525, Auth_User="carol"))
        router = await self.router(auth.url)
        decision = await router.lookup(SMTP_REQUEST)
        self.assertEqual(decision, Accept(backends=(HostPort("127.0.0.1", 2525),), user=b"carol"))
        [headers] = auth.requests
        self.assertEqual(headers["auth-smtp-to"], "RCPT TO:<bob@example.org>")
        self.assertEqual(headers["host"], "127.0.0.1")

    async def test_keep_alive(self) -> None:
        """Consecutive lookups share one TCP connection."""
        auth = await start_auth_service(self, ok_to("127.0.0.1", 2525))
        router = await self.router(auth.url)
        for _ in range(3):
            await router.lookup(SMTP_REQUEST)
        self.assertEqual((len(auth.requests), auth.connections), (3, 1))

    async def test_refusal(self) -> None:
        """A refusal comes back with its text and code."""
        auth = await start_auth_service(
            self, refuse("Try later", Auth_Error_Code="451 4.7.1", Auth_Wait="1")
        )
        router = await self.router(auth.url)
        decision = await router.lookup(SMTP_REQUEST)
        self.assertEqual(decision, Refuse("Try later", smtp_code="451 4.7.1", wait=1.0))

    async def test_http_500_then_failover(self) -> None:
        """A service answering 500 is skipped for the next URL."""
        from twisted.internet import reactor

        failing = await start_auth_service(self, lambda headers: 500)
        working = await start_auth_service(self, ok_to("127.0.0.1", 2525))
        config = AuthConfig(http=(failing.url, working.url))
        router, service = new_http_router(config, reactor)
        self.addCleanup(service.stopService)
        self.assertIsInstance(await router.lookup(SMTP_REQUEST), Accept)
        self.assertEqual((len(failing.requests), len(working.requests)), (1, 1))

    async def test_refused_connection_then_failover(self) -> None:
        """A URL nobody listens on is skipped for the next."""
        from twisted.internet import reactor

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        closed_url = f"http://127.0.0.1:{port.getHost().port}/auth"  # type: ignore[attr-defined]
        await port.stopListening()
        working = await start_auth_service(self, ok_to("127.0.0.1", 2525))
        router, service = new_http_router(AuthConfig(http=(closed_url, working.url)), reactor)
        self.addCleanup(service.stopService)
        self.assertIsInstance(await router.lookup(SMTP_REQUEST), Accept)

    async def test_garbage(self) -> None:
        """A service that answers with non-HTTP bytes makes the lookup fail."""
        auth = await start_auth_service(self, lambda headers: b"* OK IMAP4rev1 ready\r\n")
        router = await self.router(auth.url)
        with self.assertRaises(RouterUnavailable):
            await router.lookup(SMTP_REQUEST)

    async def test_slow_service_times_out(self) -> None:
        """A service that never answers times out on the router's clock."""
        from twisted.internet import reactor

        auth = await start_auth_service(self, hang())
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        clock = Clock()
        router = HTTPRouter(
            AuthConfig(http=(auth.url,), timeout=3.0), HTTPClient(Agent(reactor, pool=pool)), clock
        )
        arrived = auth.request_arrived()
        d = router.lookup(IMAP_REQUEST)
        await arrived
        self.assertNoResult(d)
        clock.advance(3.0)
        with self.assertRaises(RouterUnavailable):
            await d

    async def test_slow_service_answers_when_told(self) -> None:
        """A held answer arrives when the test releases it."""
        gate: Deferred[dict[str, str] | int | bytes] = Deferred()
        auth = await start_auth_service(self, lambda headers: gate)
        router = await self.router(auth.url)
        arrived = auth.request_arrived()
        d = router.lookup(IMAP_REQUEST)
        await arrived
        gate.callback(ok_to("127.0.0.1", 143)({}))
        self.assertIsInstance(await d, Accept)


class HTTPSTests(TestCase):
    """An https:// auth service is verified against [auth] ca (certificates made here)."""

    async def https_service(self) -> tuple[str, PKI]:
        pki = make_pki(self.mktemp())
        with open(pki.server.key, "rb") as key, open(pki.server.certificate, "rb") as cert:
            server = PrivateCertificate.loadPEM(key.read() + cert.read())
        auth = await start_auth_service(self, ok_to("127.0.0.1", 2525), tls=server.options())
        self.assertTrue(auth.url.startswith("https://127.0.0.1:"))
        return auth.url, pki

    async def lookup(self, url: str, ca: str) -> Decision:
        from twisted.internet import reactor

        router, service = new_http_router(AuthConfig(http=(url,), timeout=5.0, ca=ca), reactor)
        self.addCleanup(service.stopService)
        return await router.lookup(SMTP_REQUEST)

    async def test_verified_service(self) -> None:
        """A service whose certificate the configured CA signed answers over TLS."""
        url, pki = await self.https_service()
        decision = await self.lookup(url, pki.ca.certificate)
        self.assertEqual(decision, Accept(backends=(HostPort("127.0.0.1", 2525),)))

    async def test_unknown_ca_is_unavailable(self) -> None:
        """A certificate from a CA not in [auth] ca fails the lookup (temporary, never routed)."""
        url, pki = await self.https_service()
        with self.assertRaises(RouterUnavailable):
            await self.lookup(url, pki.unknown_ca.certificate)
