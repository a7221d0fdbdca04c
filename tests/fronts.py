"""Helpers shared by the IMAP and POP3 unit tests: a config, a scripted router, a wired front."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, wrapServerTLS
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from relaygate.config.load import parse
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import AuthRequest, Decision
from tests.certs import PKI, make_pki


def make_config(**sections: dict[str, Any]) -> Config:
    """A valid config with one listener per protocol and the given extra sections."""
    data: dict[str, Any] = {
        "server": {"name": "gw.example.org"},
        "listen": [
            {"protocol": "imap", "address": "127.0.0.1:1143"},
            {"protocol": "pop3", "address": "127.0.0.1:1110"},
        ],
        "route": [{"protocol": "*", "match": "*", "backends": ["127.0.0.1:9"]}],
    }
    data.update(sections)
    return parse(data, "test.toml")


def tls_section(pki: PKI, **settings: Any) -> dict[str, Any]:
    """A C{[tls]} section serving C{pki.server}; C{settings} add to it (C{verify_client}...)."""
    section: dict[str, Any] = {"certificate": pki.server.certificate, "key": pki.server.key}
    if settings.get("verify_client", "off") != "off":
        section["client_ca"] = pki.ca.certificate
    section.update(settings)
    return section


def server_tls_config(directory: str) -> dict[str, Any]:
    """A C{[tls]} section with certificates made in C{directory}, for fronts on TLS listeners."""
    return tls_section(make_pki(directory))


def gateway(reactor: object) -> IGatewayReactor:
    """C{reactor} (a memory reactor, or the global one) as the fronts type it."""
    return cast(IGatewayReactor, reactor)


def listener(tls: str = "none") -> ListenConfig:
    """A listener entry with the given TLS mode (the fronts only read C{tls})."""
    return ListenConfig(protocol="imap", address=make_config().listen[0].address, tls=tls)


class ScriptedRouter:
    """A router whose answers the test decides; it records every request."""

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []
        self.pending: list[Deferred[Decision]] = []
        self.answer: Callable[[AuthRequest], Decision | Exception | None] = lambda r: None

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        self.requests.append(request)
        answer = self.answer(request)
        if answer is None:
            d: Deferred[Decision] = Deferred()
            self.pending.append(d)
            return d
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def connect_front(protocol: Protocol) -> StringTransport:
    """Attach C{protocol} to a client transport from 192.0.2.7:40000 to 127.0.0.1:1143."""
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 1143),
        peerAddress=IPv4Address("TCP", "192.0.2.7", 40000),
    )
    protocol.makeConnection(transport)
    return transport


def take(transport: StringTransport) -> bytes:
    """What was written to C{transport} since the last call."""
    value: bytes = transport.value()
    transport.clear()
    return value


def backend_connection(
    reactor: MemoryReactorClock, index: int = -1
) -> tuple[Any, StringTransport]:
    """Complete the outgoing connection the front asked C{reactor} for; return its ends."""
    host, port, factory, _timeout, _bind = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    assert protocol is not None
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        peerAddress=IPv4Address("TCP", host, port),
    )
    protocol.makeConnection(transport)
    return protocol, transport


@implementer(ILogObserver)
class Gateway:
    """A front factory listening on 127.0.0.1:0 on the real reactor, for integration tests.

    Each session logs one C{relaygate.access} event when it ends; cleanup waits until every
    session built has logged it, so no connection outlives its test.
    """

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.port = 0
        self.events: list[LogEvent] = []
        self._built = 0
        self._waiters: list[Deferred[None]] = []
        build = factory.buildProtocol

        def counting_build(addr: Any) -> Any:
            self._built += 1
            return build(addr)

        factory.buildProtocol = counting_build  # type: ignore[method-assign]

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "relaygate.access":
            self.events.append(event)
            self._check()

    def _check(self) -> None:
        if len(self.events) >= self._built:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def all_ended(self) -> Deferred[None]:
        """Fires once every session built so far has ended."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        self._check()
        return waiter


async def start_gateway(
    case: TestCase, factory: Factory, tls: IOpenSSLServerConnectionCreator | None = None
) -> Gateway:
    """Listen with C{factory} on 127.0.0.1:0; cleanups wait for its sessions, then stop it.

    @param tls: for an implicit-TLS listener: wrap the endpoint in TLS, as the service does.
    """
    from twisted.internet import reactor

    gateway = Gateway(factory)
    endpoint: IStreamServerEndpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    if tls is not None:
        endpoint = wrapServerTLS(tls, endpoint, clock=reactor)
    port = await endpoint.listen(factory)
    gateway.port = port.getHost().port  # type: ignore[attr-defined]
    globalLogPublisher.addObserver(gateway)
    case.addCleanup(globalLogPublisher.removeObserver, gateway)
    case.addCleanup(port.stopListening)
    case.addCleanup(lambda: gateway.all_ended().addTimeout(30, reactor))
    return gateway


def config_for(backend_port: int, auth_url: str = "", **sections: dict[str, Any]) -> Config:
    """A config routing imap and pop3 to 127.0.0.1:C{backend_port} (or to an auth service)."""
    data: dict[str, Any] = {
        "server": {"name": "gw.example.org", "connect_timeout": 5.0},
        "listen": [
            {"protocol": "imap", "address": "127.0.0.1:1143"},
            {"protocol": "pop3", "address": "127.0.0.1:1110"},
        ],
        "route": [
            {"protocol": "*", "match": "*", "backends": [f"127.0.0.1:{backend_port}"]},
        ],
    }
    if auth_url:
        data["auth"] = {"http": auth_url, "timeout": 5.0}
    data.update(sections)
    return parse(data, "test.toml")


class RawClient:
    """A blocking socket client for exact bytes; run its calls through C{deferToThread}."""

    def __init__(self, port: int, source: str = "") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=30, source_address=(source, 0) if source else None
        )
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        """The next line, CRLF included (b"" at end of stream)."""
        line: bytes = self.file.readline()
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, prefix: bytes) -> list[bytes]:
        """Lines up to and including the first that starts with C{prefix}."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if not line or line.startswith(prefix):
                return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def dead_port(case: SynchronousTestCase) -> int:
    """A port on 127.0.0.1 where connections are refused, for as long as C{case} runs.

    The socket is bound but never listens, so the kernel refuses connections to it (RST), and
    no other process can take the port in the meantime, as it could a port bound and released.
    """
    held = socket.socket()
    case.addCleanup(held.close)
    held.bind(("127.0.0.1", 0))
    port: int = held.getsockname()[1]
    return port


def big_message(size: int) -> bytes:
    """A message of about C{size} bytes with CRLF lines, different on every line."""
    header = b"From: a@example.org\r\nTo: alice@example.org\r\nSubject: big\r\n\r\n"
    lines = [b"%08d " % i + b"x" * 66 + b"\r\n" for i in range(size // 76)]
    return header + b"".join(lines)
