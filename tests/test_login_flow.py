"""Tests for L{relaygate.login.flow}: one login attempt's results, alone and with the fronts
wired behind the PROXY reader and the limits (the real client reaches the router, refused
logins count against its address, backends can get a PROXY header)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import ClientAddress, HostPort
from relaygate.backend.errors import BackendError
from relaygate.config.limits import LimitsConfig
from relaygate.imap import IMAPFrontFactory
from relaygate.listeners import new_server_tls
from relaygate.login.flow import (
    BackendRefused,
    LoggedIn,
    LoginFlow,
    LoginLeg,
    LoginOutcome,
    LoginResult,
    Refused,
    Relay,
    RouterRefused,
    Unavailable,
)
from relaygate.login.settings import LoginSettings
from relaygate.policy import AUTH_FAILURES, HOUR, LimitedFactory, Limits, MemoryLimitStore
from relaygate.pop3 import POP3FrontFactory
from relaygate.proxy_protocol import ProxyProtocolFactory, TrustedNetworks, parse_header
from relaygate.routing.router import Accept, AuthRequest, ProxyAddresses, Refuse, RouterUnavailable
from tests.fronts import ScriptedRouter, backend_connection, gateway, make_config, take

HEADER = b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 1143\r\n"


class WiredFrontTestCase(SynchronousTestCase):
    """Fronts wired as the service wires them: PROXY reader, limits, front."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.router = ScriptedRouter()
        self.store = MemoryLimitStore(self.reactor)
        self.limits = Limits(LimitsConfig(auth_failures_per_hour=10), self.store)

    def connect(self, protocol: str, **section: Any) -> StringTransport:
        config = make_config(
            **{protocol: section, "auth": {"http": "http://127.0.0.1:1/auth"}}  # type: ignore[arg-type]
        )
        listen = config.listen[0 if protocol == "imap" else 1]
        server_tls = new_server_tls(listen, config)
        fronts: Factory = (
            IMAPFrontFactory(
                config, listen, self.router, gateway(self.reactor), server_tls=server_tls
            )
            if protocol == "imap"
            else POP3FrontFactory(
                config, listen, self.router, gateway(self.reactor), server_tls=server_tls
            )
        )
        limited = LimitedFactory(fronts, self.limits, protocol, "gw.example.org")
        factory = ProxyProtocolFactory(
            limited, TrustedNetworks(["127.0.0.1/32"]), 5.0, self.reactor
        )
        peer = IPv4Address("TCP", "127.0.0.1", 5000)
        wrapper = factory.buildProtocol(peer)
        transport = StringTransport(
            peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 1143)
        )
        wrapper.makeConnection(transport)
        wrapper.dataReceived(HEADER)
        self.wrapper = wrapper
        return transport

    def failures(self) -> int:
        counted: Deferred[int] = self.store.count_events(AUTH_FAILURES, "192.0.2.7", HOUR)
        return self.successResultOf(counted)


class LoginPolicyTests(WiredFrontTestCase):
    """What the router and the backend learn of the client; refusals are counted."""

    def test_imap_router_sees_real_client_and_refusal_counts(self) -> None:
        """IMAP: Client-IP and Proxy-Protocol-* come from the header; a refusal is counted."""
        transport = self.connect("imap")
        self.router.answer = lambda request: Refuse("Invalid login or password", wait=1.0)
        take(transport)
        self.wrapper.dataReceived(b"a LOGIN alice wrong\r\n")
        [request] = self.router.requests
        self.assertEqual(request.client_ip, "192.0.2.7")
        self.assertEqual(request.proxy, ProxyAddresses("192.0.2.7", 40001, "127.0.0.1", 1143))
        self.assertEqual(self.failures(), 1)

    def test_pop3_backend_refusal_counts(self) -> None:
        """POP3: a backend that refuses the password counts as a failed login too."""
        transport = self.connect("pop3")
        self.router.answer = lambda request: Accept((HostPort("127.0.0.1", 110),))
        take(transport)
        self.wrapper.dataReceived(b"USER alice\r\nPASS wrong\r\n")
        backend, _backend_transport = backend_connection(self.reactor)
        backend.dataReceived(b"+OK ready\r\n")
        backend.dataReceived(b"+OK\r\n-ERR [AUTH] Authentication failed\r\n")
        self.assertIn(b"-ERR", take(transport))
        self.assertEqual(self.failures(), 1)

    def test_imap_backend_gets_proxy_header(self) -> None:
        """[imap] backend_proxy_protocol: the backend connection starts with the header."""
        transport = self.connect("imap", backend_proxy_protocol="v2")
        self.router.answer = lambda request: Accept((HostPort("127.0.0.1", 143),))
        take(transport)
        self.wrapper.dataReceived(b"a LOGIN alice pw\r\n")
        _backend, backend_transport = backend_connection(self.reactor)
        parsed = parse_header(take(backend_transport))
        assert parsed is not None
        header, rest = parsed
        self.assertEqual(header.version, 2)
        assert header.source is not None and header.destination is not None
        self.assertEqual((header.source.host, header.source.port), ("192.0.2.7", 40001))
        self.assertEqual((header.destination.host, header.destination.port), ("127.0.0.1", 1143))
        self.assertEqual(rest, b"")

    def test_route_overrides_section(self) -> None:
        """A route's backend_proxy_protocol wins over the section's."""
        transport = self.connect("pop3", backend_proxy_protocol="v2")
        self.router.answer = lambda request: Accept(
            (HostPort("127.0.0.1", 110),), backend_proxy_protocol="v1"
        )
        take(transport)
        self.wrapper.dataReceived(b"USER alice\r\nPASS pw\r\n")
        _backend, backend_transport = backend_connection(self.reactor)
        self.assertEqual(take(backend_transport), HEADER)


class FailedLoginLimitTests(WiredFrontTestCase):
    """C{[limits] auth_failures_per_hour} ends a running IMAP/POP3 session, as SMTP's does."""

    def setUp(self) -> None:
        super().setUp()
        self.limits = Limits(LimitsConfig(auth_failures_per_hour=2), self.store)
        self.router.answer = lambda request: Refuse("Invalid login or password", wait=1.0)

    def test_imap_session_closed_at_the_limit(self) -> None:
        """The failure that reaches the limit is answered, then the session closes."""
        transport = self.connect("imap", max_login_failures=10)
        take(transport)
        self.wrapper.dataReceived(b"a LOGIN alice wrong\r\n")
        self.reactor.advance(1.0)
        self.assertEqual(take(transport), b"a NO Invalid login or password\r\n")
        self.assertFalse(transport.disconnecting)
        self.wrapper.dataReceived(b"b LOGIN alice wrong\r\nc LOGIN alice guess\r\n")
        self.reactor.advance(1.0)
        self.assertEqual(take(transport), b"b NO Invalid login or password\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.router.requests), 2)

    def test_pop3_session_closed_at_the_limit(self) -> None:
        """POP3: the same, with -ERR."""
        transport = self.connect("pop3", max_login_failures=10)
        take(transport)
        for _ in range(2):
            self.wrapper.dataReceived(b"USER alice\r\nPASS wrong\r\n")
            self.reactor.advance(1.0)
        self.assertEqual(take(transport), b"+OK\r\n-ERR Invalid login or password\r\n" * 2)
        self.assertTrue(transport.disconnecting)

    def test_imap_blocked_by_other_sessions(self) -> None:
        """When other sessions from the address reached the limit, the next login is refused."""
        transport = self.connect("imap", max_login_failures=10)
        take(transport)
        for _ in range(2):
            self.successResultOf(self.limits.auth_failed("192.0.2.7"))
        self.wrapper.dataReceived(b"a LOGIN alice pw\r\n")
        self.assertEqual(
            take(transport), b"* BYE too many failed logins from your address, try again later\r\n"
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.router.requests, [])

    def test_pop3_blocked_by_other_sessions(self) -> None:
        """POP3: the same, with -ERR."""
        transport = self.connect("pop3")
        take(transport)
        for _ in range(2):
            self.successResultOf(self.limits.auth_failed("192.0.2.7"))
        self.wrapper.dataReceived(b"USER alice\r\nPASS pw\r\n")
        self.assertEqual(
            take(transport),
            b"+OK\r\n-ERR too many failed logins from your address, try again later\r\n",
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.router.requests, [])


class _Dialogue:
    """A scripted backend login: records what it was asked, answers as told."""

    def __init__(self, outcome: LoginOutcome | Exception) -> None:
        self.outcome = outcome
        self.calls: list[tuple[bytes, bytes, bytes, str]] = []

    async def __call__(
        self, leg: LoginLeg, tag: bytes, user: bytes, password: bytes
    ) -> LoginOutcome:
        self.calls.append((tag, user, password, leg.tls_mode))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


CLIENT = ClientAddress("192.0.2.7", 40000, "127.0.0.1", 1143)
REQUEST = AuthRequest("imap", "192.0.2.7", 40000, "plain", b"alice", b"pw")


class LoginFlowTests(SynchronousTestCase):
    """L{LoginFlow.attempt} on a memory reactor with a scripted router and dialogue."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.router = ScriptedRouter()
        config = make_config(imap={"backend_tls": "opportunistic"})
        self.settings = LoginSettings.from_section(config, config.listen[0], config.imap, None)

    def attempt(
        self, dialogue: _Dialogue, request: AuthRequest = REQUEST
    ) -> tuple[LoginFlow, Deferred[LoginResult]]:
        flow = LoginFlow(
            "imap", self.settings, self.router, gateway(self.reactor), dialogue, lambda: False
        )
        return flow, Deferred.fromCoroutine(flow.attempt(request, b"a", CLIENT))

    def test_relay(self) -> None:
        """Accepted and logged in: relay, with the router's user and the section's TLS mode."""
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 143),), user=b"bob")
        dialogue = _Dialogue(LoggedIn(b"a OK\r\n"))
        flow, d = self.attempt(dialogue)
        backend_connection(self.reactor)
        result = self.successResultOf(d)
        assert isinstance(result, Relay)
        self.assertEqual(result.outcome, LoggedIn(b"a OK\r\n"))
        self.assertIs(result.backend, flow.backend)
        self.assertEqual(dialogue.calls, [(b"a", b"bob", b"pw", "opportunistic")])
        self.assertEqual((flow.user, flow.backend_address), (b"bob", "127.0.0.1:143"))

    def test_router_refused(self) -> None:
        """The router's refusal comes back as is; no backend is tried."""
        refusal = Refuse("Invalid login or password", wait=2.0)
        self.router.answer = lambda r: refusal
        _, d = self.attempt(_Dialogue(LoggedIn(b"")))
        self.assertEqual(self.successResultOf(d), RouterRefused(refusal))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_backend_refused(self) -> None:
        """The backend's refusal closes that connection and comes back with its text."""
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 143),))
        flow, d = self.attempt(_Dialogue(Refused(b"[AUTHENTICATIONFAILED] no")))
        _, backend_transport = backend_connection(self.reactor)
        self.assertEqual(self.successResultOf(d), BackendRefused(b"[AUTHENTICATIONFAILED] no"))
        self.assertTrue(backend_transport.disconnecting)
        self.assertIsNone(flow.backend)

    def test_unavailable(self) -> None:
        """Router failure, an answer without a password, no backend, or a broken dialogue."""
        self.router.answer = lambda r: RouterUnavailable("down")
        self.assertEqual(
            self.successResultOf(self.attempt(_Dialogue(LoggedIn(b"")))[1]), Unavailable()
        )
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 143),))
        apop = AuthRequest("pop3", "192.0.2.7", 40000, "apop", b"alice", b"digest")
        self.assertEqual(
            self.successResultOf(self.attempt(_Dialogue(LoggedIn(b"")), apop)[1]), Unavailable()
        )
        self.router.answer = lambda r: Accept(())
        self.assertEqual(
            self.successResultOf(self.attempt(_Dialogue(LoggedIn(b"")))[1]), Unavailable()
        )
        self.router.answer = lambda r: Accept((HostPort("127.0.0.1", 143),))
        _, d = self.attempt(_Dialogue(BackendError("garbage")))
        _, backend_transport = backend_connection(self.reactor)
        self.assertEqual(self.successResultOf(d), Unavailable())
        self.assertTrue(backend_transport.disconnecting)
