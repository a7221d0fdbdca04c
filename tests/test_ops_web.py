"""Tests for L{relaygate.ops.web}: the scrape, the sessions view, the kick, and access rules."""

from __future__ import annotations

import json
from typing import Any

import treq
from prometheus_client import CollectorRegistry
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from relaygate.ops.metrics import Metrics
from relaygate.ops.sessions import KICK, SessionRegistry
from relaygate.ops.web import MetricsResource, is_loopback, ops_root
from tests.test_ops_sessions import open_session


class WebTests(SynchronousTestCase):
    """The resources over an in-memory HTTP connection from a loopback client."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.sessions = SessionRegistry(Clock(), prefix="w1")
        self.token = ""

    def request(
        self, method: str, url: str, headers: dict[bytes | str, list[bytes | str]] | None = None
    ) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        """Status, headers and body of one request to a fresh root resource."""
        agent = RequestTraversalAgent(ops_root(self.registry, self.sessions, self.token))
        client = HTTPClient(agent)
        response: Any = self.successResultOf(
            client.request(method, "http://127.0.0.1" + url, headers=headers)
        )
        body: bytes = self.successResultOf(treq.content(response))
        agent.flush()
        return response.code, dict(response.headers.getAllRawHeaders()), body

    def test_metrics_text_exposition(self) -> None:
        """GET /metrics answers the Prometheus text format with the counters' values."""
        self.metrics.session_started("pop3")
        code, headers, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"Content-Type"], [b"text/plain; version=0.0.4; charset=utf-8"])
        self.assertIn(b'relaygate_sessions_total{protocol="pop3"} 1.0\n', body)

    def test_metrics_openmetrics_when_asked(self) -> None:
        """A scraper asking for OpenMetrics gets it, ending with # EOF."""
        code, headers, body = self.request(
            "GET", "/metrics", {"Accept": ["application/openmetrics-text; version=1.0.0"]}
        )
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"Content-Type"][0].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_sessions_list(self) -> None:
        """GET /sessions answers the open sessions as a JSON list."""
        session, _ = open_session(self.sessions, user="alice")
        session.state = "command"
        code, headers, body = self.request("GET", "/sessions")
        self.assertEqual((code, headers[b"Content-Type"]), (200, [b"application/json"]))
        listed = json.loads(body)
        self.assertEqual(
            [(s["id"], s["user"], s["state"]) for s in listed], [("w1.1", "alice", "command")]
        )

    def test_close_by_user_answers_count(self) -> None:
        """POST /sessions/close?user=NAME closes that user's sessions and says how many."""
        _, first = open_session(self.sessions, user="alice")
        _, other = open_session(self.sessions, user="bob")
        _, second = open_session(self.sessions, user="alice")
        code, _, body = self.request("POST", "/sessions/close?user=alice")
        self.assertEqual((code, json.loads(body)), (200, {"closed": 2}))
        self.assertEqual((first.closed, second.closed, other.closed), ([KICK], [KICK], []))

    def test_close_by_id(self) -> None:
        """POST /sessions/close?id=ID closes one session."""
        session, hooks = open_session(self.sessions)
        code, _, body = self.request("POST", f"/sessions/close?id={session.id}")
        self.assertEqual((code, json.loads(body), hooks.closed), (200, {"closed": 1}, [KICK]))

    def test_close_needs_one_selector(self) -> None:
        """A close naming nothing, or both a user and an id, is a 400 and closes nothing."""
        _, hooks = open_session(self.sessions, user="alice")
        for query in ("", "?user=", "?user=alice&id=w1.1"):
            code, _, _ = self.request("POST", "/sessions/close" + query)
            self.assertEqual(code, 400)
        self.assertEqual(hooks.closed, [])

    def test_close_is_post_only(self) -> None:
        """GET on /sessions/close is not allowed, so a crawler cannot kick anyone."""
        _, hooks = open_session(self.sessions, user="alice")
        code, _, _ = self.request("GET", "/sessions/close?user=alice")
        self.assertEqual((code, hooks.closed), (405, []))

    def test_token_required_when_set(self) -> None:
        """With a token, every path needs the bearer header, even from loopback."""
        self.token = "s3cret"
        for path in ("/metrics", "/sessions"):
            code, headers, _ = self.request("GET", path)
            self.assertEqual(code, 401)
            self.assertEqual(headers[b"WWW-Authenticate"], [b'Bearer realm="relaygate"'])
            code, _, _ = self.request("GET", path, {"Authorization": ["Bearer wrong"]})
            self.assertEqual(code, 401)
            code, _, _ = self.request("GET", path, {"Authorization": ["Bearer s3cret"]})
            self.assertEqual(code, 200)
        _, hooks = open_session(self.sessions, user="alice")
        code, _, _ = self.request("POST", "/sessions/close?user=alice")
        self.assertEqual((code, hooks.closed), (401, []))

    def test_unknown_path_is_404(self) -> None:
        """Paths other than the documented ones are not found."""
        self.assertEqual(self.request("GET", "/")[0], 404)
        self.assertEqual(self.request("GET", "/sessions/other")[0], 404)


class AccessRuleTests(SynchronousTestCase):
    """Without a token only loopback clients are served."""

    def render(self, host: str, token: str = "") -> DummyRequest:
        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", host, 40000)
        registry = CollectorRegistry()
        Metrics(registry)
        resource = MetricsResource(registry, token)
        body = resource.render_GET(request)  # type: ignore[arg-type]
        request.write(body)
        return request

    def test_remote_client_refused(self) -> None:
        """A non-loopback client gets 403 and no metrics."""
        request = self.render("192.0.2.7")
        self.assertEqual((request.responseCode, b"".join(request.written)), (403, b""))

    def test_loopback_served(self) -> None:
        """Any 127/8 client is served."""
        request = self.render("127.0.0.2")
        self.assertIsNone(request.responseCode)  # left at DummyRequest's default: 200
        self.assertIn(b"# TYPE relaygate_sessions_total counter", b"".join(request.written))

    def test_is_loopback(self) -> None:
        """Loopback in every spelling, and nothing else, counts."""
        self.assertEqual(
            [is_loopback(h) for h in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1", "x")],
            [True, True, True, False, False],
        )
