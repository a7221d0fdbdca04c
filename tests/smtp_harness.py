"""In-memory harness for SMTP front tests: a front on a StringTransport, a fake router, and
backends connected through a L{MemoryReactorClock} whose replies the test writes by hand."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from relaygate.addresses import HostPort
from relaygate.config.load import parse
from relaygate.listeners import new_server_tls
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Accept, AuthRequest, Decision
from relaygate.smtp.factory import SMTPFrontFactory
from relaygate.smtp.front import SMTPFront

BACKEND = HostPort("127.0.0.1", 2500)
OTHER_BACKEND = HostPort("127.0.0.1", 2501)


class FakeRouter:
    """Answers every lookup with C{answer} (a Decision, or a Deferred the test fires)."""

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []
        self.answer: Decision | Deferred[Decision] = Accept((BACKEND,))
        self.by_recipient: dict[bytes, Decision] = {}

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        self.requests.append(request)
        if request.recipient in self.by_recipient:
            return succeed(self.by_recipient[request.recipient])
        if isinstance(self.answer, Deferred):
            return self.answer
        return succeed(self.answer)


def make_config(**smtp: Any) -> dict[str, Any]:
    """A minimal config dict with C{smtp} overrides."""
    return {
        "server": {"name": "gw.test", "idle_timeout": 30.0, "session_timeout": 600.0},
        "listen": [{"protocol": "smtp", "address": "127.0.0.1:2525"}],
        "route": [{"match": "*", "backends": ["127.0.0.1:2500"]}],
        "smtp": {"xclient": False, **smtp},
    }


class BackendEnd:
    """The test's side of one backend connection."""

    def __init__(self, protocol: IProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def reply(self, data: bytes) -> None:
        """The backend sends C{data}."""
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """What the gateway sent since the last call."""
        value: bytes = self.transport.value()
        self.transport.clear()
        return value


class FrontHarness:
    """One front session with a controllable clock, router and backends."""

    def __init__(self, config: dict[str, Any] | None = None, client_ip: str = "127.0.0.1") -> None:
        self.reactor = MemoryReactorClock()
        self.router = FakeRouter()
        loaded = parse(config or make_config(), "test.toml")
        server_tls = new_server_tls(loaded.listen[0], loaded)
        factory = SMTPFrontFactory(
            loaded,
            loaded.listen[0],
            self.router,
            cast(IGatewayReactor, self.reactor),
            server_tls=server_tls,
        )
        peer = IPv4Address("TCP", client_ip, 40000)
        self.front: SMTPFront = factory.buildProtocol(peer)
        self.client = StringTransport(
            peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 2525)
        )
        self.front.makeConnection(self.client)
        self.factory = factory
        self.backends: list[BackendEnd] = []

    def send(self, data: bytes) -> None:
        """The client sends C{data}."""
        self.front.dataReceived(data)

    def replies(self) -> bytes:
        """What the client received since the last call."""
        value: bytes = self.client.value()
        self.client.clear()
        return value

    def connect_backend(self, greeting: bytes = b"220 backend ESMTP\r\n") -> BackendEnd:
        """Complete the gateway's newest pending backend connection and greet."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[len(self.backends)]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        end = BackendEnd(protocol, transport)
        self.backends.append(end)
        if greeting:
            end.reply(greeting)
        return end

    def open_transaction(
        self,
        extensions: bytes = b"250-backend\r\n250 PIPELINING\r\n",
        recipient: bytes = b"rcpt@example.org",
    ) -> BackendEnd:
        """EHLO, MAIL and one accepted RCPT, with the backend's EHLO answered."""
        self.send(b"EHLO client.test\r\nMAIL FROM:<from@example.net>\r\n")
        self.send(b"RCPT TO:<" + recipient + b">\r\n")
        backend = self.connect_backend()
        assert backend.received() == b"EHLO gw.test\r\n", "unexpected EHLO"
        backend.reply(extensions)
        backend.received()
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.replies()
        return backend
