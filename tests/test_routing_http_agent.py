"""Tests for L{relaygate.routing.http_wire} and L{relaygate.routing.http_agent}: the lean agent."""

from __future__ import annotations

import gc
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import ResponseDone
from twisted.web.client import URI, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

import tests.properties  # noqa: F401 (the Hypothesis profile)
from relaygate.config.auth import AuthConfig
from relaygate.routing import http_wire, raw_headers
from relaygate.routing.http import HTTPRouter, new_http_router
from relaygate.routing.http_agent import LeanAgent
from relaygate.routing.http_client import AuthHTTPClient, _AuthEndpoints
from relaygate.routing.http_wire import (
    BadResponseError,
    HTTPConnection,
    ResponseHead,
    ResponseParser,
)
from relaygate.routing.raw_headers import canonical_name, headers_from_raw
from relaygate.routing.router import Accept, AuthRequest
from relaygate.tls.client import https_policy

URL = b"http://127.0.0.1:8080/auth?x=1"
OK = b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
)


class _Parsed:
    """Everything a parser produced, for comparing two parses."""

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.parser = ResponseParser(self.body.append)
        self.head: ResponseHead | None = None

    def feed(self, data: bytes) -> None:
        head = self.parser.feed(data)
        if head is not None:
            self.head = head
            self.parser.feed(b"")

    def summary(self) -> tuple[Any, ...]:
        head = self.head
        assert head is not None
        return (
            head.version,
            head.code,
            head.phrase,
            list(head.headers.getAllRawHeaders()),
            head.length,
            head.keep_alive,
            b"".join(self.body),
            self.parser.done,
            self.parser.leftover,
        )


def _parse(*pieces: bytes) -> _Parsed:
    parsed = _Parsed()
    for piece in pieces:
        parsed.feed(piece)
    return parsed


class ParserTests(SynchronousTestCase):
    """The response parser: what it reads, and what it refuses."""

    def test_content_length_answer(self) -> None:
        """Status, canonical headers, body and the end of a Content-Length answer."""
        parsed = _parse(b"HTTP/1.1 200 OK\r\nauth-status: OK\r\nContent-Length: 5\r\n\r\nhelloX")
        self.assertEqual(
            parsed.summary(),
            (
                (b"HTTP", 1, 1),
                200,
                b"OK",
                [(b"Auth-Status", [b"OK"]), (b"Content-Length", [b"5"])],
                5,
                True,
                b"hello",
                True,
                b"X",
            ),
        )

    def test_chunked_answer(self) -> None:
        """Chunk extensions and trailers are read and dropped; the chunks make the body."""
        parsed = _parse(CHUNKED)
        self.assertEqual(parsed.summary()[4:], (None, True, b"hello world", True, b""))

    def test_bare_lf_lines_and_no_phrase(self) -> None:
        """Lines ending in LF alone are read, and a status line may have no reason phrase."""
        parsed = _parse(b"HTTP/1.1 204\nAuth-Status: OK\n\n")
        self.assertEqual(parsed.summary()[1:3], (204, b""))
        self.assertTrue(parsed.parser.done)

    def test_connection_close_and_http_10(self) -> None:
        """Connection: close, HTTP/1.0 and a body read until close are not kept alive."""
        closing = _parse(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n")
        self.assertFalse(closing.summary()[5])
        old = _parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(old.summary()[5], False)
        until_close = _parse(b"HTTP/1.1 200 OK\r\n\r\nsome", b" body")
        self.assertFalse(until_close.parser.done)
        self.assertTrue(until_close.parser.end_of_input())
        self.assertEqual(until_close.summary()[4:8], (None, False, b"some body", True))

    def test_refused_answers(self) -> None:
        """Each ambiguous, unexpected or oversized answer raises BadResponseError."""
        for answer in (
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nAuth-Status OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nAuth Status: OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nAuth-Status: O\rK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
            b"HTTP/1.1 200 OK\r\nX-Long: " + b"x" * http_wire.MAX_LINE + b"\r\n",
            b"HTTP/1.1 200 OK\r\nX-Long: " + b"x" * http_wire.MAX_LINE,
        ):
            with self.assertRaises(BadResponseError, msg=repr(answer[:60])):
                _parse(answer)

    def test_repeated_equal_lengths_are_one(self) -> None:
        """Content-Length repeated with the same value (RFC 9110 8.6) is that length."""
        parsed = _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(parsed.summary()[4], 2)
        self.assertEqual(parsed.summary()[6], b"ok")

    def test_hundred_headers_are_accepted(self) -> None:
        """The limit is 100 header lines, and 100 is allowed."""
        parsed = _parse(b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n")
        self.assertEqual(len(parsed.summary()[3][0][1]), 100)

    @given(
        answer=st.sampled_from(
            [
                OK + b"leftover",
                CHUNKED,
                b"HTTP/1.0 200 OK\nAuth-Status: OK\n\n",
                b"\r\nHTTP/1.1 500 Server Error\r\nContent-Length: 0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nA: 1\nB:2 \r\nA: 3\r\nContent-Length: 2\r\n\r\nokHTTP",
            ]
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    )
    def test_any_split_parses_the_same(self, answer: bytes, cuts: list[int]) -> None:
        """Fed in any pieces, an answer parses exactly as it does in one piece."""
        whole = _parse(answer)
        points = sorted({min(cut, len(answer)) for cut in cuts})
        bounds = [0, *points, len(answer)]
        split = _parse(*(answer[a:b] for a, b in itertools.pairwise(bounds)))
        whole.parser.end_of_input()
        split.parser.end_of_input()
        self.assertEqual(split.summary(), whole.summary())


class HeadersTests(SynchronousTestCase):
    """Headers built without Twisted checking them again."""

    def test_twisted_keeps_raw_headers_where_expected(self) -> None:
        """Headers still stores canonical names in _rawHeaders: the fast path is in use.

        If a Twisted release changes that, this fails, and headers_from_raw falls back to
        the public API (checked below) until the fast path is adapted.
        """
        self.assertIn("_rawHeaders", Headers.__slots__)
        self.assertTrue(raw_headers._RAW_HEADERS)

    def test_fast_and_public_paths_agree(self) -> None:
        """Both ways of building give the same Headers, values in order."""
        raw = {b"Host": [b"a", b"b"], b"Auth-User": [b"bob"]}
        fast = headers_from_raw(raw)
        public = raw_headers._public_headers(raw)
        self.assertEqual(fast, public)
        self.assertEqual(
            list(fast.getAllRawHeaders()), [(b"Host", [b"a", b"b"]), (b"Auth-User", [b"bob"])]
        )
        self.assertEqual(fast.getRawHeaders(b"host"), [b"a", b"b"])

    def test_canonical_names(self) -> None:
        """Names get Twisted's case, exceptions included."""
        self.assertEqual(
            [canonical_name(name) for name in (b"client-ip", b"AUTH-SSL-CERT", b"etag")],
            [b"Client-Ip", b"Auth-Ssl-Cert", b"ETag"],
        )


@implementer(IAgentEndpointFactory)
class _MemoryEndpoints:
    """Every URL connects through C{reactor.connectTCP}, so a test holds each connection."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, uri.host.decode("ascii"), uri.port)


class _Body(Protocol):
    """Collects a response body and how it ended."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.reason = reason


class AgentTests(SynchronousTestCase):
    """The agent's connections and pool, on a memory reactor with string transports."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.agent = LeanAgent(self.reactor, _MemoryEndpoints(self.reactor), max_idle=4)
        self.transports: list[StringTransport] = []

    def request(self, headers: Headers | None = None) -> Deferred[IResponse]:
        return self.agent.request(
            b"GET", URL, headers if headers is not None else Headers({b"Host": [b"auth"]})
        )

    def connect(self, index: int = -1) -> tuple[HTTPConnection, StringTransport]:
        """Complete the connection attempt C{index}."""
        factory = self.reactor.tcpClients[index][2]
        wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert wrapper is not None
        transport = StringTransport()
        wrapper.makeConnection(transport)
        self.transports.append(transport)
        connection = wrapper._wrappedProtocol  # type: ignore[attr-defined]
        assert isinstance(connection, HTTPConnection)
        return connection, transport

    def idle_connection(self) -> HTTPConnection:
        """A connection that answered one request and is now idle in the pool."""
        d = self.request()
        connection, _ = self.connect()
        connection.dataReceived(OK)
        self.read(d)
        return connection

    def read(self, d: Deferred[IResponse]) -> tuple[IResponse, _Body]:
        response = self.successResultOf(d)
        body = _Body()
        response.deliverBody(body)
        return response, body

    def test_request_bytes(self) -> None:
        """One write: request line, the caller's headers in order, the blank line."""
        headers = Headers()
        headers.addRawHeader(b"Host", b"auth")
        headers.addRawHeader(b"Auth-Method", b"plain")
        self.request(headers)
        _, transport = self.connect()
        self.assertEqual(
            transport.value(),
            b"GET /auth?x=1 HTTP/1.1\r\nHost: auth\r\nAuth-Method: plain\r\n\r\n",
        )

    def test_host_added_when_missing(self) -> None:
        """Without a Host header, the URL's host and port are sent."""
        self.agent.request(b"GET", URL)
        _, transport = self.connect()
        self.assertEqual(
            transport.value(), b"GET /auth?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
        )

    def test_body_producer_refused(self) -> None:
        """auth_http has no request bodies; a request with one is refused without connecting."""
        d = self.agent.request(b"POST", URL, None, object())  # type: ignore[arg-type]
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_keep_alive_reuses_one_connection(self) -> None:
        """Three requests in a row go over one connection, answered in turn."""
        d = self.request()
        connection, transport = self.connect()
        for turn in range(3):
            if turn:
                d = self.request()
            self.assertEqual(transport.value(), b"GET /auth?x=1 HTTP/1.1\r\nHost: auth\r\n\r\n")
            transport.clear()
            connection.dataReceived(OK)
            response, body = self.read(d)
            self.assertEqual((response.code, b"".join(body.data)), (200, b"hello"))
            assert body.reason is not None
            self.assertIsInstance(body.reason.value, ResponseDone)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertFalse(transport.disconnecting)

    def test_empty_body_frees_the_connection_first(self) -> None:
        """With no body to read, the connection is idle again when the caller gets the answer."""
        d = self.request()
        connection, transport = self.connect()
        again: list[Deferred[IResponse]] = []
        d.addCallback(lambda response: again.append(self.request()))
        transport.clear()
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(len(again), 1)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(transport.value(), b"GET /auth?x=1 HTTP/1.1\r\nHost: auth\r\n\r\n")

    def test_connection_close_is_not_reused(self) -> None:
        """An answer with Connection: close closes its connection; the next request opens one."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.read(d)
        self.assertTrue(transport.disconnecting)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_http_10_until_close(self) -> None:
        """An HTTP/1.0 body read until close ends with PotentialDataLoss and is not reused."""
        d = self.request()
        connection, _ = self.connect()
        connection.dataReceived(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n\r\nbody")
        response, body = self.read(d)
        self.assertEqual((response.version, response.length), ((b"HTTP", 1, 0), UNKNOWN_LENGTH))
        self.assertIsNone(body.reason)
        connection.connectionLost(Failure(ConnectionDone()))
        assert body.reason is not None
        self.assertIsInstance(body.reason.value, PotentialDataLoss)
        self.assertEqual(b"".join(body.data), b"body")
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_chunked_body_then_reuse(self) -> None:
        """A chunked answer's body arrives whole and the connection serves again."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(CHUNKED[:70])
        response, body = self.read(d)
        connection.dataReceived(CHUNKED[70:])
        self.assertEqual(b"".join(body.data), b"hello world")
        self.assertEqual(response.headers.getRawHeaders(b"auth-status"), [b"OK"])
        transport.clear()
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(transport.value()[:4], b"GET ")

    def test_stopped_body_drops_the_connection(self) -> None:
        """A body reader that stops producing (too long a body) closes the connection."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100)
        _, body = self.read(d)
        assert body.transport is not None
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnected)
        connection.dataReceived(b"x" * 100)
        self.assertEqual(len(b"".join(body.data)), 100)
        connection.connectionLost(Failure(ConnectionDone()))
        assert body.reason is not None
        self.assertIsInstance(body.reason.value, ResponseFailed)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_malformed_answer_fails(self) -> None:
        """A malformed head fails the request with ResponseFailed and drops the connection."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nAuth-Status OK\r\n\r\n")
        failure = self.failureResultOf(d, ResponseFailed)
        [reason] = failure.value.reasons  # type: ignore[attr-defined]
        self.assertIsInstance(reason.value, BadResponseError)
        self.assertTrue(transport.disconnected)

    def test_closed_mid_answer(self) -> None:
        """A connection lost inside the head fails the request; inside the body, the body."""
        d = self.request()
        connection, _ = self.connect()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nAuth-")
        connection.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseFailed)
        d = self.request()
        connection, _ = self.connect()
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhel")
        _, body = self.read(d)
        connection.connectionLost(Failure(ConnectionDone()))
        assert body.reason is not None
        self.assertIsInstance(body.reason.value, ResponseFailed)
        self.assertEqual(body.data, [b"hel"])

    def test_new_connection_closed_without_answer_is_not_retried(self) -> None:
        """On a new connection, no answer at all is a failure: ResponseNeverReceived."""
        d = self.request()
        connection, _ = self.connect()
        connection.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_stale_reused_connection_is_retried_once(self) -> None:
        """A reused connection closed before any answer byte: the request goes on a new one."""
        connection = self.idle_connection()
        d = self.request()
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        fresh, transport = self.connect()
        self.assertEqual(transport.value(), b"GET /auth?x=1 HTTP/1.1\r\nHost: auth\r\n\r\n")
        fresh.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_retry_answers(self) -> None:
        """The retried request's answer is the caller's answer."""
        connection = self.idle_connection()
        d = self.request()
        connection.connectionLost(Failure(ConnectionDone()))
        fresh, _ = self.connect()
        fresh.dataReceived(OK)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_idle_connection_closed_by_server_is_forgotten(self) -> None:
        """A connection the server closed while idle is not picked again."""
        connection = self.idle_connection()
        connection.connectionLost(Failure(ConnectionDone()))
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_idle_expiry(self) -> None:
        """An idle connection older than 240 s is closed when next picked; a newer one is used."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(OK)
        self.read(d)
        self.reactor.advance(240.0)
        d = self.request()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        connection.dataReceived(OK)
        self.read(d)
        self.reactor.advance(240.5)
        self.request()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_idle_cap(self) -> None:
        """At most max_idle connections are kept; the others are closed after their answer."""
        pending = [self.request() for _ in range(5)]
        connections = [self.connect(index) for index in range(5)]
        for (connection, _), d in zip(connections, pending, strict=True):
            connection.dataReceived(OK)
            self.read(d)
        self.assertEqual(
            [transport.disconnecting for _, transport in connections],
            [False, False, False, False, True],
        )

    def test_cancel_while_connecting(self) -> None:
        """Cancelling before the connection is made stops the connection attempt."""
        d = self.request()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)  # type: ignore[attr-defined]

    def test_timeout_closes_the_connection(self) -> None:
        """A request that times out (cancelled by addTimeout) drops its connection."""
        d = self.request()
        d.addTimeout(5.0, self.reactor)
        connection, transport = self.connect()
        self.reactor.advance(5.0)
        self.failureResultOf(d, TimeoutError)
        self.assertTrue(transport.disconnected)
        connection.connectionLost(Failure(ConnectionDone()))
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_refused_connection(self) -> None:
        """A refused connection fails the request with the connection error itself."""
        d = self.request()
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.failureResultOf(d, ConnectionRefusedError)

    def test_unasked_bytes_drop_an_idle_connection(self) -> None:
        """Bytes on an idle connection mean it is out of step: it is closed, never reused."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(OK)
        self.read(d)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(transport.disconnected)
        connection.connectionLost(Failure(ConnectionDone()))
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_dropped_idle_connection_is_not_picked(self) -> None:
        """A connection dropped while idle is skipped even before its loss is reported."""
        connection = self.idle_connection()
        connection.dataReceived(b"junk")
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_stopping_an_ended_body_keeps_the_connection(self) -> None:
        """Once the body has ended, its transport's stopProducing leaves the connection be."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(OK)
        _, body = self.read(d)
        assert body.transport is not None
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.assertFalse(transport.disconnecting)
        self.request()
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_close_cached_connections(self) -> None:
        """Closing the pool closes idle connections and fires once they are gone."""
        d = self.request()
        connection, transport = self.connect()
        connection.dataReceived(OK)
        self.read(d)
        closed = self.agent.close_cached_connections()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(closed)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(closed))


class GarbageTests(SynchronousTestCase):
    """A lookup leaves no reference cycles: at thousands a second, each would wake the GC."""

    def test_lookups_leave_no_cycles(self) -> None:
        """Fifty lookups through router, treq and agent leave nothing for the cycle collector."""
        reactor = MemoryReactorClock()
        agent = LeanAgent(reactor, _MemoryEndpoints(reactor))
        router = HTTPRouter(
            AuthConfig(http=("http://127.0.0.1:8080/auth",)), AuthHTTPClient(agent), reactor
        )
        request = AuthRequest(protocol="smtp", client_ip="127.0.0.1")
        answer = (
            b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
            b"Auth-Port: 25\r\nContent-Length: 2\r\n\r\n"
        )
        first = router.lookup(request)
        wrapper = reactor.tcpClients[0][2].buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        assert wrapper is not None
        wrapper.makeConnection(StringTransport())
        wrapper.dataReceived(answer + b"ok")
        self.assertIsInstance(self.successResultOf(first), Accept)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for _ in range(50):
            d = router.lookup(request)
            wrapper.dataReceived(answer)
            wrapper.dataReceived(b"ok")
            self.assertIsInstance(self.successResultOf(d), Accept)
        del d
        self.assertEqual(gc.collect(), 0)


class _Auth(Resource):
    """A loopback auth_http endpoint counting requests; chunked answers when asked."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render_GET(self, request: Request) -> bytes | int:
        self.requests += 1
        request.setHeader(b"Auth-Status", b"OK")
        request.setHeader(b"Auth-Server", b"127.0.0.1")
        request.setHeader(b"Auth-Port", b"25")
        if request.args.get(b"chunked"):
            request.write(b"chunked ")
            request.write(b"body")
            request.finish()
            return NOT_DONE_YET
        return b"plain body"


class _CountingSite(Site):
    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        _CountingSite.connections += 1
        return super().buildProtocol(addr)


class LoopbackTests(TestCase):
    """The agent under treq against a real twisted.web server on 127.0.0.1."""

    async def serve(self) -> tuple[str, _Auth]:
        from twisted.internet import reactor

        resource = _Auth()
        _CountingSite.connections = 0
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            _CountingSite(resource)
        )
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/auth", resource  # type: ignore[attr-defined]

    async def test_keep_alive_under_treq(self) -> None:
        """Five GETs through treq share one connection; plain and chunked bodies arrive whole."""
        from twisted.internet import reactor

        url, resource = await self.serve()
        agent = LeanAgent(reactor, _AuthEndpoints(reactor, https_policy(""), 5.0))
        self.addCleanup(agent.close_cached_connections)
        client: HTTPClient = AuthHTTPClient(agent)
        bodies = []
        for query in ("", "?chunked=1", "", "?chunked=1", ""):
            response = await client.get(url + query)
            self.assertEqual(response.headers.getRawHeaders(b"Auth-Status"), [b"OK"])
            bodies.append(await response.content())
        self.assertEqual(bodies, [b"plain body", b"chunked body"] * 2 + [b"plain body"])
        self.assertEqual((resource.requests, _CountingSite.connections), (5, 1))

    async def test_router_on_the_lean_agent(self) -> None:
        """The router built for production runs lookups over one kept-alive connection."""
        from twisted.internet import reactor

        url, resource = await self.serve()
        router, service = new_http_router(AuthConfig(http=(url,)), reactor)
        self.addCleanup(service.stopService)
        request = AuthRequest(protocol="smtp", client_ip="127.0.0.1")
        for _ in range(3):
            self.assertIsInstance(await router.lookup(request), Accept)
        self.assertEqual((resource.requests, _CountingSite.connections), (3, 1))
