"""Tests for L{relaygate.ops.health} and L{relaygate.ops.probe}: probes against real loopback
servers, fall/rise, passive marks and the failover order."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from typing_extensions import override

from relaygate.addresses import HostPort
from relaygate.ops.health import Health, HealthSettings, probe_endpoint
from relaygate.ops.metrics import Metrics
from relaygate.ops.probe import ProbeTarget
from relaygate.tls.client import backend_tls_creator
from tests.certs import PKI, make_pki

reactor: Any = global_reactor

GREETINGS = {"smtp": b"220 backend ESMTP", "imap": b"* OK ready", "pop3": b"+OK ready"}


class FakeBackend(LineReceiver):
    """A mail server that answers just what a probe asks, and records the lines it got."""

    delimiter = b"\r\n"

    def __init__(self, factory: FakeBackendFactory) -> None:
        self.factory = factory

    @override
    def connectionMade(self) -> None:
        if self.factory.greeting is not None:
            self.sendLine(self.factory.greeting)

    @override
    def lineReceived(self, line: bytes) -> None:
        self.factory.lines.append(line)
        if line.startswith(b"PROXY "):
            return
        protocol = self.factory.mail_protocol
        word = line.split(b" ")[-1 if protocol == "imap" else 0].upper()
        tag = line.split(b" ")[0]
        if protocol == "smtp":
            answers = {
                b"EHLO": [b"250-backend", b"250 STARTTLS"],
                b"STARTTLS": [b"220 go ahead"],
                b"QUIT": [b"221 bye"],
            }
        elif protocol == "imap":
            answers = {
                b"STARTTLS": [tag + b" OK begin TLS"],
                b"LOGOUT": [b"* BYE", tag + b" OK done"],
            }
        else:
            answers = {b"STLS": [b"+OK begin TLS"], b"QUIT": [b"+OK bye"]}
        for answer in answers.get(word, [b"500 what?"]):
            self.sendLine(answer)
        if word in (b"STARTTLS", b"STLS"):
            assert self.factory.tls is not None
            self.transport.startTLS(self.factory.tls)  # type: ignore[union-attr]
        if word in (b"QUIT", b"LOGOUT"):
            self.transport.loseConnection()  # type: ignore[union-attr]


class FakeBackendFactory(Factory):
    """Builds L{FakeBackend}s for one protocol; C{greeting=None} never greets."""

    def __init__(self, protocol: str, greeting: bytes | None = b"", tls: Any = None) -> None:
        self.mail_protocol = protocol
        self.greeting = GREETINGS[protocol] if greeting == b"" else greeting
        self.tls = tls
        self.lines: list[bytes] = []

    @override
    def buildProtocol(self, addr: Any) -> Protocol:
        return FakeBackend(self)


def listen(test: TestCase, factory: Factory, tls: Any = None) -> HostPort:
    """Start C{factory} on a loopback port (implicit TLS with C{tls}); its address."""
    port: IListeningPort
    if tls is not None:
        port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
    else:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return HostPort("127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]


class ProbeTests(TestCase):
    """Probes against real servers on loopback."""

    settings = HealthSettings(interval=5.0, timeout=2.0, fall=1, rise=1)

    def checker(self, target: ProbeTarget, **settings: Any) -> Health:
        values = {**self.settings.__dict__, **settings}
        return Health([target], HealthSettings(**values), reactor, "probe.example", Metrics(None))

    async def probe(self, target: ProbeTarget, **settings: Any) -> tuple[bool, list[Any]]:
        """Probe once with fall=rise=1: whether the backend is up after, and the log."""
        health = self.checker(target, **settings)
        with capturedLogs() as events:
            await health.probe(target)
        ours = [e for e in events if e["log_namespace"].startswith("relaygate.")]
        return health.is_up(target.backend), ours

    def pki(self) -> PKI:
        return make_pki(os.path.abspath(self.mktemp()))

    async def test_smtp_healthy(self) -> None:
        """SMTP: greeting, EHLO with our name, QUIT; the backend stays up."""
        backend = FakeBackendFactory("smtp")
        address = listen(self, backend)
        up, events = await self.probe(ProbeTarget("smtp", address))
        self.assertTrue(up)
        self.assertEqual(events, [])
        self.assertEqual(backend.lines, [b"EHLO probe.example", b"QUIT"])

    async def test_imap_healthy(self) -> None:
        """IMAP: * OK greeting, then LOGOUT."""
        backend = FakeBackendFactory("imap")
        up, _ = await self.probe(ProbeTarget("imap", listen(self, backend)))
        self.assertTrue(up)
        self.assertEqual(backend.lines, [b"h2 LOGOUT"])

    async def test_pop3_healthy(self) -> None:
        """POP3: +OK greeting, then QUIT."""
        backend = FakeBackendFactory("pop3")
        up, _ = await self.probe(ProbeTarget("pop3", listen(self, backend)))
        self.assertTrue(up)
        self.assertEqual(backend.lines, [b"QUIT"])

    async def test_proxy_header_first(self) -> None:
        """With backend_proxy_protocol v1 the probe sends PROXY UNKNOWN before anything."""
        backend = FakeBackendFactory("pop3")
        target = ProbeTarget("pop3", listen(self, backend), proxy_protocol="v1")
        up, _ = await self.probe(target)
        self.assertTrue(up)
        self.assertEqual(backend.lines, [b"PROXY UNKNOWN", b"QUIT"])

    async def test_smtp_starttls_required(self) -> None:
        """backend_tls required: EHLO, STARTTLS, the handshake, EHLO again over TLS, QUIT."""
        pki = self.pki()
        server_tls = PrivateCertificate.loadPEM(open(pki.server.combined).read()).options()
        backend = FakeBackendFactory("smtp", tls=server_tls)
        address = listen(self, backend)
        creator = backend_tls_creator("127.0.0.1", pki.ca.certificate)
        up, _ = await self.probe(ProbeTarget("smtp", address, "required", tls_creator=creator))
        self.assertTrue(up)
        self.assertEqual(
            backend.lines,
            [b"EHLO probe.example", b"STARTTLS", b"EHLO probe.example", b"QUIT"],
        )

    async def test_untrusted_certificate_is_down(self) -> None:
        """A backend whose certificate does not verify fails the probe."""
        pki = self.pki()
        server_tls = PrivateCertificate.loadPEM(open(pki.untrusted.combined).read()).options()
        backend = FakeBackendFactory("pop3", tls=server_tls)
        creator = backend_tls_creator("127.0.0.1", pki.ca.certificate)
        target = ProbeTarget("pop3", listen(self, backend), "required", tls_creator=creator)
        up, events = await self.probe(target)
        self.assertFalse(up)
        self.assertEqual(backend.lines, [b"STLS"])
        self.assertEqual(len(events), 1)

    async def test_imap_implicit_tls(self) -> None:
        """backend_tls implicit: TLS from the first byte, then the IMAP probe."""
        pki = self.pki()
        server_tls = PrivateCertificate.loadPEM(open(pki.server.combined).read()).options()
        backend = FakeBackendFactory("imap")
        address = listen(self, backend, tls=server_tls)
        creator = backend_tls_creator("127.0.0.1", pki.ca.certificate)
        up, _ = await self.probe(ProbeTarget("imap", address, "implicit", tls_creator=creator))
        self.assertTrue(up)
        self.assertEqual(backend.lines, [b"h2 LOGOUT"])

    async def test_any_protocol_route_reads_the_greeting(self) -> None:
        """A backend of a "*" route used by several protocols passes on any mail greeting."""
        backend = FakeBackendFactory("imap")
        up, _ = await self.probe(ProbeTarget("*", listen(self, backend)))
        self.assertTrue(up)
        self.assertEqual(backend.lines, [])
        bad = FakeBackendFactory("smtp", greeting=b"HTTP/1.0 400 Bad Request")
        up, _ = await self.probe(ProbeTarget("*", listen(self, bad)))
        self.assertFalse(up)

    async def test_never_greets_is_down(self) -> None:
        """A backend that accepts but never greets fails by timeout and is taken out."""
        backend = FakeBackendFactory("smtp", greeting=None)
        target = ProbeTarget("smtp", listen(self, backend))
        up, events = await self.probe(target, timeout=0.2)
        self.assertFalse(up)
        self.assertEqual(backend.lines, [])
        self.assertEqual(events[0]["why"], "no answer within 0.2s")

    async def test_refused_is_down(self) -> None:
        """A backend whose port refuses connections is down."""
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        address = HostPort("127.0.0.1", port.getHost().port)
        await port.stopListening()
        up, events = await self.probe(ProbeTarget("imap", address))
        self.assertFalse(up)
        self.assertIn("refused", events[0]["why"])

    async def test_bad_greeting_is_down(self) -> None:
        """An SMTP backend greeting with 554 is down, and the log says what it said."""
        backend = FakeBackendFactory("smtp", greeting=b"554 no service")
        up, events = await self.probe(ProbeTarget("smtp", listen(self, backend)))
        self.assertFalse(up)
        self.assertEqual(events[0]["why"], "expected 220, got b'554 no service'")


class StateTests(SynchronousTestCase):
    """fall/rise, passive marks and the failover order, on a fake clock."""

    a = HostPort("127.0.0.1", 2501)
    b = HostPort("127.0.0.1", 2502)
    c = HostPort("127.0.0.1", 2503)

    def setUp(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self.clock = Clock()
        targets = [ProbeTarget("smtp", x) for x in (self.a, self.b, self.c)]
        self.health = Health(
            targets,
            HealthSettings(interval=5.0, timeout=2.0, fall=2, rise=3, passive_down=10.0),
            self.clock,
            "probe.example",
            Metrics(self.registry),
        )

    def up_gauge(self, backend: HostPort) -> float | None:
        return self.registry.get_sample_value("relaygate_backend_up", {"backend": str(backend)})

    def test_fall_and_rise(self) -> None:
        """Down after fall failures in a row, up after rise passes in a row; logged once each."""
        key = str(self.a)
        with capturedLogs() as events:
            self.health.record(key, False, "x")
            self.assertTrue(self.health.is_up(self.a))
            self.health.record(key, True, "")
            self.health.record(key, False, "x")
            self.assertTrue(self.health.is_up(self.a))
            self.health.record(key, False, "timeout")
            self.assertFalse(self.health.is_up(self.a))
            self.assertEqual(self.up_gauge(self.a), 0.0)
            self.health.record(key, False, "timeout")
            self.health.record(key, True, "")
            self.health.record(key, True, "")
            self.assertFalse(self.health.is_up(self.a))
            self.health.record(key, True, "")
            self.assertTrue(self.health.is_up(self.a))
        self.assertEqual(self.up_gauge(self.a), 1.0)
        self.assertEqual(
            [(e["log_level"].name, e["backend"]) for e in events],
            [("warn", key), ("info", key)],
        )

    def test_order_skips_down_backends(self) -> None:
        """Failover tries the backends that are up, in their configured order."""
        for _ in range(2):
            self.health.record(str(self.a), False, "x")
        self.assertEqual(self.health.order([self.a, self.b, self.c]), [self.b, self.c])

    def test_order_all_down_tries_all(self) -> None:
        """When every backend is down they are all tried, in order."""
        for backend in (self.a, self.b):
            for _ in range(2):
                self.health.record(str(backend), False, "x")
        self.assertEqual(self.health.order([self.a, self.b]), [self.a, self.b])

    def test_unknown_backend_is_up(self) -> None:
        """A backend no probe knows (named by the auth service) is tried."""
        other = HostPort("127.0.0.9", 25)
        self.assertEqual(self.health.order([other]), [other])

    def test_passive_mark_expires(self) -> None:
        """A failed connection avoids the backend for passive_down seconds, then it is back."""
        other = HostPort("127.0.0.9", 25)
        with capturedLogs() as events:
            self.health.mark_failed(other)
            self.health.mark_failed(other)
        self.assertEqual(len(events), 1)
        self.assertEqual(self.health.order([other, self.b]), [self.b])
        self.assertEqual(self.up_gauge(other), 0.0)
        self.clock.advance(9.9)
        self.assertFalse(self.health.is_up(other))
        self.clock.advance(0.1)
        self.assertTrue(self.health.is_up(other))
        self.assertEqual(self.up_gauge(other), 1.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_passive_mark_lifted_by_success(self) -> None:
        """A connection that works lifts the passive mark at once."""
        self.health.mark_failed(self.b)
        self.health.mark_ok(self.b)
        self.assertTrue(self.health.is_up(self.b))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_passive_off(self) -> None:
        """passive_down = 0 turns passive marking off."""
        health = Health([], HealthSettings(passive_down=0.0), self.clock, "x")
        health.mark_failed(self.a)
        self.assertTrue(health.is_up(self.a))

    def test_service_probes_every_interval(self) -> None:
        """The running service probes each target at start and every interval; stop ends it."""
        memory = MemoryReactorClock()
        health = Health(
            [ProbeTarget("smtp", self.a), ProbeTarget("smtp", self.a)],
            HealthSettings(interval=5.0, timeout=2.0),
            memory,
            "x",
        )
        health.startService()
        self.assertEqual([(c[0], c[1]) for c in memory.tcpClients], [("127.0.0.1", 2501)])
        memory.advance(2.0)  # the attempt times out (connector never connects)
        memory.advance(3.0)
        self.assertEqual(len(memory.tcpClients), 2)
        health.stopService()
        memory.advance(10.0)
        self.assertEqual(len(memory.tcpClients), 2)

    def test_stop_cancels_probe_in_flight(self) -> None:
        """Stopping the service cancels a probe still waiting."""
        memory = MemoryReactorClock()
        health = Health([ProbeTarget("smtp", self.a)], HealthSettings(), memory, "x")
        health.startService()
        health.stopService()
        self.assertEqual(memory.getDelayedCalls(), [])

    def test_probe_endpoint_proxy_v2(self) -> None:
        """The probe's endpoint sends a v2 LOCAL header when the route asks for v2."""
        memory = MemoryReactorClock()
        endpoint = probe_endpoint(memory, ProbeTarget("smtp", self.a, proxy_protocol="v2"), 2.0)
        connecting: Deferred[Any] = endpoint.connect(Factory.forProtocol(Protocol))
        self.assertNoResult(connecting)
        self.assertEqual(memory.tcpClients[0][1], 2501)
