"""Tests for L{relaygate.ops.wrapper} and L{relaygate.ops.metered}."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError, UserError
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogPublisher, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.login.operations import LoginOperations
from relaygate.login.phase import LoginPhase
from relaygate.observe import (
    RecipientOutcome,
    SessionRecord,
    TransactionRecord,
    add_access_observer,
    remove_access_observer,
)
from relaygate.ops.build import Operations
from relaygate.ops.drain import Drain
from relaygate.ops.health import Health, HealthSettings
from relaygate.ops.metered import AccessMetrics, MeteredReactor, MeteredRouter
from relaygate.ops.metrics import Metrics
from relaygate.ops.sessions import KICK, SessionRegistry
from relaygate.ops.wrapper import OpsConnection, OpsFactory, goodbye, session_for
from relaygate.policy import TOO_MANY_CONNECTIONS
from relaygate.routing.router import Accept, AuthRequest, Decision, Refuse, RouterUnavailable


class Front(Protocol):
    """A front that records what it got, with optional ops hooks."""

    def __init__(self) -> None:
        self.received = b""
        self.closed_with: list[str] = []
        self.drained = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class HookedFront(Front):
    def ops_close(self, reason: str) -> None:
        self.closed_with.append(reason)

    def ops_drain(self) -> None:
        self.drained += 1


class WrapperTests(SynchronousTestCase):
    """Each front connection is a session in the registry, counted in the metrics."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.sessions = SessionRegistry(self.clock, prefix="p")
        self.drain = Drain(self.sessions, self.clock, 30.0, lambda: None)
        health = Health([], HealthSettings(), self.clock, "x")
        self.ops = Operations(self.metrics, self.sessions, health, 3, self.drain)

    def connect(
        self, protocol: str = "smtp", front: type[Front] = Front, implicit_tls: bool = False
    ) -> tuple[OpsConnection, StringTransport, Front]:
        factory = OpsFactory(
            Factory.forProtocol(front),
            self.ops,
            protocol,
            "127.0.0.1:2525",
            "gw.example",
            implicit_tls,
        )
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.5", 4000))
        connection = factory.buildProtocol(None)
        connection.makeConnection(transport)
        assert isinstance(connection.wrapped, Front)
        return connection, transport, connection.wrapped

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_session_registered_and_counted(self) -> None:
        """A connection joins the registry with its client, listener and generation."""
        connection, _, front = self.connect("imap")
        session = session_for(front.transport)
        assert session is not None
        self.assertEqual(
            (session.protocol, session.client, session.listener, session.generation),
            ("imap", "127.0.0.5:4000", "127.0.0.1:2525", 3),
        )
        self.assertEqual(self.value("relaygate_sessions_total", protocol="imap"), 1.0)
        self.assertEqual(self.value("relaygate_sessions_active", protocol="imap"), 1.0)
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.sessions), 0)
        self.assertEqual(self.value("relaygate_sessions_active", protocol="imap"), 0.0)

    def test_bytes_counted_both_ways(self) -> None:
        """Bytes in and out are added up; the first input moves the state to command."""
        connection, transport, front = self.connect()
        session = session_for(front.transport)
        assert session is not None and front.transport is not None
        front.transport.write(b"220 hi\r\n")
        front.transport.writeSequence([b"250 a\r\n", b"250 b\r\n"])
        self.assertEqual(session.state, "greeting")
        connection.dataReceived(b"EHLO x\r\n")
        self.assertEqual((session.bytes_in, session.bytes_out, session.state), (8, 22, "command"))
        self.assertEqual(transport.value(), b"220 hi\r\n250 a\r\n250 b\r\n")
        self.assertEqual(front.received, b"EHLO x\r\n")

    def test_kick_writes_the_protocol_goodbye(self) -> None:
        """A kick of a front without its own hook writes the protocol's words and closes."""
        for protocol, words in [
            ("smtp", b"421 4.7.0 gw.example Session closed by the administrator\r\n"),
            ("imap", b"* BYE Session closed by the administrator\r\n"),
            ("pop3", b"-ERR Session closed by the administrator\r\n"),
        ]:
            _, transport, front = self.connect(protocol)
            session = session_for(front.transport)
            assert session is not None
            self.assertEqual(self.sessions.close(None, session.id, KICK), 1)
            self.assertEqual(transport.value(), words)
            self.assertTrue(transport.disconnecting)
            session.end()

    def test_front_hooks_used(self) -> None:
        """A front with ops_close and ops_drain decides itself."""
        _, transport, front = self.connect(front=HookedFront)
        self.sessions.close("", None)
        self.drain.start()
        (session,) = list(self.sessions)
        session.hooks.close("shutdown")
        self.assertEqual((front.closed_with, front.drained), (["shutdown"], 1))
        self.assertEqual(transport.value(), b"")

    def test_connection_during_drain_refused(self) -> None:
        """A connection accepted after the drain began is told and closed, not registered."""
        self.drain.start()
        factory = OpsFactory(Factory.forProtocol(Front), self.ops, "smtp", "l", "gw.example")
        transport = StringTransport()
        connection = factory.buildProtocol(None)
        connection.makeConnection(transport)
        self.assertEqual(transport.value(), b"421 4.3.2 gw.example Service shutting down\r\n")
        self.assertIsNone(connection.wrapped)
        self.assertEqual(len(self.sessions), 0)

    def test_tls_handshakes(self) -> None:
        """A completed handshake counts ok; a TLS connection lost before it counts failed."""
        connection, _, _ = self.connect(implicit_tls=True)
        connection.handshakeCompleted()
        connection.connectionLost(Failure(ConnectionLost()))
        connection, _, _ = self.connect(implicit_tls=True)
        connection.connectionLost(Failure(ConnectionLost()))
        connection, _, _ = self.connect()
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.value("relaygate_tls_handshakes_total", result="ok"), 1.0)
        self.assertEqual(self.value("relaygate_tls_handshakes_total", result="failed"), 1.0)

    def test_goodbye_shutdown(self) -> None:
        """The drain's words are 421 4.3.2 for SMTP."""
        self.assertEqual(
            goodbye("smtp", "shutdown", "gw.example"),
            b"421 4.3.2 gw.example Service shutting down\r\n",
        )


class FixedRouter:
    def __init__(self, answer: Deferred[Decision]) -> None:
        self.answer = answer
        self.name = "fixed"

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        return self.answer


class MeteredTests(SynchronousTestCase):
    """Routing and access events are counted without code in the fronts."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.clock = Clock()

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_router_results_and_logins(self) -> None:
        """accept, refuse and error are counted; logins only for Auth-Method other than none."""
        accept: Deferred[Decision] = succeed(Accept((HostPort("127.0.0.1", 25),)))
        router = MeteredRouter(FixedRouter(accept), self.metrics, self.clock)
        self.assertEqual(router.name, "fixed")
        self.successResultOf(router.lookup(AuthRequest("smtp", "127.0.0.1")))
        refuse: Deferred[Decision] = succeed(Refuse("no"))
        router = MeteredRouter(FixedRouter(refuse), self.metrics, self.clock)
        self.successResultOf(router.lookup(AuthRequest("imap", "127.0.0.1", method="plain")))
        broken: Deferred[Decision] = fail(RouterUnavailable())
        router = MeteredRouter(FixedRouter(broken), self.metrics, self.clock)
        self.failureResultOf(
            router.lookup(AuthRequest("pop3", "127.0.0.1", method="plain")), RouterUnavailable
        )
        self.assertEqual(
            [
                self.value("relaygate_auth_requests_total", result=r)
                for r in ("accept", "refuse", "error")
            ],
            [1.0, 1.0, 1.0],
        )
        self.assertEqual(
            self.value("relaygate_logins_total", protocol="imap", result="refused"), 1.0
        )
        self.assertEqual(
            self.value("relaygate_logins_total", protocol="pop3", result="error"), 1.0
        )
        self.assertEqual(self.value("relaygate_logins_total", protocol="smtp", result="ok"), 0.0)
        self.assertEqual(self.value("relaygate_auth_request_duration_seconds_count"), 3.0)

    def test_access_events(self) -> None:
        """A transaction event counts its outcome, recipients and size; limits by name."""
        publisher = LogPublisher()
        access_metrics = AccessMetrics(self.metrics)
        publisher.addObserver(access_metrics)
        add_access_observer(access_metrics.access)
        self.addCleanup(remove_access_observer, access_metrics.access)
        record = TransactionRecord(started=1.0, size=500, outcome="delivered")
        record.recipients = [
            RecipientOutcome("a@x", "250 ok"),
            RecipientOutcome("b@x", "450 later"),
            RecipientOutcome("c@x", "550 no"),
        ]
        with capturedLogs() as events:
            record.emit(SessionRecord("s", "c", "l", started=1.0), now=2.0)
        # The global log's copy of the event is not counted a second time.
        for event in events:
            publisher(event)
        Logger(namespace="relaygate.policy.LimitedConnection", observer=publisher).info(
            "refusing", why=TOO_MANY_CONNECTIONS.decode()
        )
        self.assertEqual(self.value("relaygate_transactions_total", outcome="delivered"), 1.0)
        self.assertEqual(self.value("relaygate_message_bytes_total"), 500.0)
        self.assertEqual(
            [
                self.value("relaygate_recipients_total", result=r)
                for r in ("accepted", "deferred", "refused")
            ],
            [1.0, 1.0, 1.0],
        )
        self.assertEqual(
            self.value("relaygate_limit_refusals_total", limit="connections_per_address"), 1.0
        )


class HealthRoutingTests(SynchronousTestCase):
    """Failover order and passive marks come from the router and reactor wrappers."""

    a = HostPort("127.0.0.1", 2501)
    b = HostPort("127.0.0.1", 2502)

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.reactor = MemoryReactorClock()
        self.health = Health(
            [], HealthSettings(passive_down=10.0), self.reactor, "x", self.metrics
        )

    def test_router_orders_backends_by_health(self) -> None:
        """A backend held down moves out of an accepted route's list."""
        accept: Deferred[Decision] = succeed(Accept((self.a, self.b)))
        router = MeteredRouter(FixedRouter(accept), self.metrics, self.reactor, self.health)
        self.health.mark_failed(self.a)
        decision = self.successResultOf(router.lookup(AuthRequest("smtp", "127.0.0.1")))
        assert isinstance(decision, Accept)
        self.assertEqual(decision.backends, (self.b,))

    def test_reactor_times_and_marks(self) -> None:
        """A backend connection is timed; a refused one marks its backend down."""
        metered = MeteredReactor(self.reactor, self.metrics, self.health)
        inner = ClientFactory.forProtocol(Protocol)
        metered.connectTCP("127.0.0.1", 2501, inner, 5)
        host, port, timed, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 2501, 5))
        self.reactor.advance(0.25)
        timed.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2501))
        self.assertEqual(
            self.registry.get_sample_value("relaygate_backend_connect_duration_seconds_sum"),
            0.25,
        )
        metered.connectTCP("127.0.0.1", 2502, inner, 5)
        refused = self.reactor.tcpClients[1][2]
        refused.clientConnectionFailed(cast(Any, None), Failure(ConnectionRefusedError()))
        self.assertFalse(self.health.is_up(self.b))
        metered.connectTCP("127.0.0.1", 2501, inner, 5)
        cancelled = self.reactor.tcpClients[2][2]
        cancelled.clientConnectionFailed(cast(Any, None), Failure(UserError()))
        self.assertTrue(self.health.is_up(self.a))
        # The clock and the timers are the reactor's own methods, with no frame of ours.
        self.assertEqual(metered.seconds, self.reactor.seconds)
        self.assertEqual(metered.callLater, self.reactor.callLater)
        self.assertEqual(metered.getDelayedCalls(), self.reactor.getDelayedCalls())


class LoginFactsTests(SynchronousTestCase):
    """IMAP and POP3 sessions show their login's user, backend and phase."""

    def test_facts(self) -> None:
        """A spliced session shows spliced; a session still reading shows no state."""

        class Flow:
            user = b"alice@example.org"
            backend_address = "127.0.0.1:143"

        class Front(LoginOperations):
            phase = LoginPhase.SPLICED

            @property
            def state(self) -> LoginPhase:
                return self.phase

        front = Front()
        front._flow = cast(Any, Flow())
        self.assertEqual(
            front.ops_facts(),
            {"user": "alice@example.org", "backend": "127.0.0.1:143", "state": "spliced"},
        )
        front.phase = LoginPhase.READING
        self.assertEqual(front.ops_facts()["state"], "")
