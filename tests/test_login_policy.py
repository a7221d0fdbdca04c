"""IMAP and POP3 fronts behind the PROXY reader and the limits: the real client reaches the
router, refused logins count against its address, and backends can get a PROXY header."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.config.limits import LimitsConfig
from relaygate.imap import IMAPFrontFactory
from relaygate.listeners import new_server_tls
from relaygate.policy import AUTH_FAILURES, HOUR, LimitedFactory, Limits, MemoryLimitStore
from relaygate.pop3 import POP3FrontFactory
from relaygate.proxy_protocol import ProxyProtocolFactory, TrustedNetworks, parse_header
from relaygate.routing.router import Accept, ProxyAddresses, Refuse
from tests.fronts import ScriptedRouter, backend_connection, make_config, take

HEADER = b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 1143\r\n"


class LoginPolicyTests(SynchronousTestCase):
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
            IMAPFrontFactory(config, listen, self.router, self.reactor, server_tls=server_tls)
            if protocol == "imap"
            else POP3FrontFactory(config, listen, self.router, self.reactor, server_tls=server_tls)
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
