"""Helpers shared by the IMAP and POP3 unit tests: a config, a scripted router, a wired front."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from relaygate.config import Config, ListenConfig, parse
from relaygate.routing.router import AuthRequest, Decision


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
