"""Helpers for the IMAP/POP3 TLS tests: fronts on a memory reactor with recorded TLS switches."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.imap import IMAPFrontFactory
from relaygate.listeners import new_server_tls
from relaygate.pop3 import POP3FrontFactory
from tests.certs import make_pki
from tests.fronts import (
    ScriptedRouter,
    gateway,
    make_config,
    tls_section,
)

ADDRESS = HostPort("127.0.0.1", 1143)
BACKEND = HostPort("127.0.0.1", 9143)
IMAP_CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID"


class TLSStringTransport(StringTransport):
    """A L{StringTransport} that records C{startTLS}: the creator, and what was written before.

    The handshake itself is the test's to play: it calls the protocol's C{handshakeCompleted}
    (or C{connectionLost} with an L{SSL.Error}).
    """

    def __init__(self, host: HostPort, peer: HostPort) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", host.host, host.port),
            peerAddress=IPv4Address("TCP", peer.host, peer.port),
        )
        self.tls_creator: object = None
        self.before_tls = b""

    def startTLS(self, contextFactory: object, normal: bool = True) -> None:  # noqa: N803
        """Record the switch to TLS instead of doing it."""
        self.tls_creator = contextFactory
        self.before_tls = self.value()


def listen(protocol: str, tls: str) -> ListenConfig:
    """A listener of C{protocol} with TLS mode C{tls} (the fronts read C{protocol} and C{tls})."""
    return ListenConfig(protocol=protocol, address=ADDRESS, tls=tls)


class TLSFrontTestCase(SynchronousTestCase):
    """Fronts on a memory reactor with a scripted router, a test PKI and recorded TLS switches."""

    protocol = "imap"

    def setUp(self) -> None:
        self.pki = make_pki(os.path.abspath(self.mktemp()))
        self.reactor = MemoryReactorClock()
        self.router = ScriptedRouter()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def config(self, tls: dict[str, Any] | None = None, **section: Any) -> Config:
        """A config with the test PKI's server certificate and C{section} as [imap]/[pop3]."""
        if self.protocol == "pop3":
            section.setdefault("auth", ["user", "plain", "external"])
        else:
            section.setdefault("auth", ["plain", "login", "external"])
        tls_settings = {"verify_client": "optional", **(tls or {})}
        return make_config(
            **{self.protocol: section},
            auth={"http": "http://127.0.0.1:1/auth"},
            tls=tls_section(self.pki, **tls_settings),
        )

    def factory(self, mode: str = "starttls", **section: Any) -> Factory:
        config = self.config(**section)
        self.listener = listen(self.protocol, mode)
        self.server_tls = new_server_tls(self.listener, config)
        server_tls = self.server_tls
        if self.protocol == "pop3":
            return POP3FrontFactory(
                config,
                self.listener,
                self.router,
                gateway(self.reactor),
                lambda: 42,
                server_tls=server_tls,
            )
        return IMAPFrontFactory(
            config,
            self.listener,
            self.router,
            gateway(self.reactor),
            lambda: 42,
            server_tls=server_tls,
        )

    def front(self, mode: str = "starttls", **section: Any) -> tuple[Any, TLSStringTransport]:
        front = self.factory(mode, **section).buildProtocol(None)
        assert front is not None
        transport = TLSStringTransport(ADDRESS, HostPort("192.0.2.7", 40000))
        front.makeConnection(transport)
        return front, transport

    def backend(self, index: int = -1) -> tuple[Any, TLSStringTransport]:
        """Complete the outgoing backend connection the front asked for."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = TLSStringTransport(HostPort("127.0.0.1", 50000), HostPort(host, port))
        protocol.makeConnection(transport)
        return protocol, transport

    def access_events(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace") == "relaygate.access"]
