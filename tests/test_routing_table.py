"""Tests for L{relaygate.routing.table}: the embedded C{[[route]]} router."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.config.routes import RouteConfig
from relaygate.routing.router import Accept, AuthRequest, Decision, Refuse
from relaygate.routing.table import TableRouter

A = HostPort("192.0.2.1", 25)
B = HostPort("192.0.2.2", 25)
C = HostPort("mx.example.net", 2525)
V6 = HostPort("2001:db8::1", 143)


def _smtp(recipient: bytes) -> AuthRequest:
    return AuthRequest(
        protocol="smtp",
        client_ip="198.51.100.7",
        rcpt_to=b"RCPT TO:<" + recipient + b">",
        recipient=recipient,
    )


def _login(protocol: str, user: bytes) -> AuthRequest:
    return AuthRequest(protocol=protocol, client_ip="198.51.100.7", method="plain", user=user)


class TableRouterTests(SynchronousTestCase):
    """Which route answers which request."""

    def decide(self, routes: list[RouteConfig], request: AuthRequest) -> Decision:
        return self.successResultOf(TableRouter(routes).lookup(request))

    def test_exact_domain(self) -> None:
        """A recipient in a routed domain goes to that route's backends."""
        routes = [
            RouteConfig("smtp", "example.org", (A,)),
            RouteConfig("smtp", "example.com", (B,)),
        ]
        self.assertEqual(self.decide(routes, _smtp(b"bob@example.com")), Accept(backends=(B,)))

    def test_domain_is_case_insensitive(self) -> None:
        """Domains match whatever their case."""
        routes = [RouteConfig("smtp", "example.org", (A,))]
        self.assertEqual(self.decide(routes, _smtp(b"Bob@EXAMPLE.Org")), Accept(backends=(A,)))

    def test_backends_keep_their_order(self) -> None:
        """All of a route's backends come back, in configured order, for the front's failover."""
        routes = [RouteConfig("smtp", "example.org", (C, A, B))]
        self.assertEqual(self.decide(routes, _smtp(b"bob@example.org")).backends, (C, A, B))  # type: ignore[union-attr]

    def test_first_route_wins(self) -> None:
        """Of two routes for the same domain, the first in the file wins."""
        routes = [
            RouteConfig("smtp", "example.org", (A,)),
            RouteConfig("*", "example.org", (B,)),
            RouteConfig("smtp", "example.org", (C,)),
        ]
        self.assertEqual(self.decide(routes, _smtp(b"bob@example.org")), Accept(backends=(A,)))

    def test_exact_beats_wildcard_written_first(self) -> None:
        """An exact domain beats a "*" route even when "*" comes first in the file."""
        routes = [
            RouteConfig("smtp", "*", (A,)),
            RouteConfig("smtp", "example.org", (B,)),
        ]
        self.assertEqual(self.decide(routes, _smtp(b"bob@example.org")), Accept(backends=(B,)))
        self.assertEqual(self.decide(routes, _smtp(b"bob@other.test")), Accept(backends=(A,)))

    def test_first_wildcard_wins(self) -> None:
        """Of two "*" routes, the first in the file wins."""
        routes = [RouteConfig("*", "*", (A,)), RouteConfig("smtp", "*", (B,))]
        self.assertEqual(self.decide(routes, _smtp(b"bob@x.test")), Accept(backends=(A,)))

    def test_protocol_filter(self) -> None:
        """A route serves only its protocol; "*" serves all three."""
        routes = [
            RouteConfig("imap", "example.org", (V6,)),
            RouteConfig("pop3", "example.org", (B,)),
            RouteConfig("*", "example.org", (C,)),
        ]
        self.assertEqual(
            self.decide(routes, _login("imap", b"bob@example.org")), Accept(backends=(V6,))
        )
        self.assertEqual(
            self.decide(routes, _login("pop3", b"bob@example.org")), Accept(backends=(B,))
        )
        self.assertEqual(self.decide(routes, _smtp(b"bob@example.org")), Accept(backends=(C,)))

    def test_exact_route_for_other_protocol_does_not_block_wildcard(self) -> None:
        """An exact route for IMAP does not hide an SMTP "*" route from SMTP."""
        routes = [
            RouteConfig("imap", "example.org", (A,)),
            RouteConfig("smtp", "*", (B,)),
        ]
        self.assertEqual(self.decide(routes, _smtp(b"bob@example.org")), Accept(backends=(B,)))

    def test_login_domain(self) -> None:
        """IMAP and POP3 route by the login's domain."""
        routes = [RouteConfig("pop3", "example.net", (A,))]
        self.assertEqual(
            self.decide(routes, _login("pop3", b"carol@example.net")), Accept(backends=(A,))
        )

    def test_unrouted_smtp_recipient_is_refused(self) -> None:
        """A recipient no route covers is refused as relay access denied, 550 5.7.1."""
        routes = [RouteConfig("smtp", "example.org", (A,))]
        self.assertEqual(
            self.decide(routes, _smtp(b"bob@elsewhere.test")),
            Refuse("Relay access denied", smtp_code="550 5.7.1"),
        )

    def test_unrouted_login_is_refused(self) -> None:
        """A login whose domain no route covers fails like a wrong password."""
        routes = [RouteConfig("smtp", "*", (A,))]
        self.assertEqual(
            self.decide(routes, _login("imap", b"bob@example.org")),
            Refuse("Authentication failed"),
        )

    def test_no_domain_only_matches_wildcard(self) -> None:
        """A login or recipient without a domain only matches "*"."""
        routes = [RouteConfig("imap", "example.org", (A,))]
        self.assertIsInstance(self.decide(routes, _login("imap", b"bob")), Refuse)
        routes.append(RouteConfig("imap", "*", (B,)))
        self.assertEqual(self.decide(routes, _login("imap", b"bob")), Accept(backends=(B,)))

    def test_domain_is_the_recipients(self) -> None:
        """For SMTP the recipient's domain counts, not the sender's."""
        routes = [RouteConfig("smtp", "example.org", (A,))]
        request = AuthRequest(
            protocol="smtp",
            client_ip="198.51.100.7",
            mail_from=b"MAIL FROM:<alice@example.org>",
            recipient=b"bob@example.com",
        )
        self.assertIsInstance(self.decide(routes, request), Refuse)

    def test_no_routes(self) -> None:
        """With no routes at all, everything is refused."""
        self.assertIsInstance(self.decide([], _smtp(b"bob@example.org")), Refuse)
