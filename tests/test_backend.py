"""Tests for L{relaygate.backend}: the policy, connect with failover and the STARTTLS decision.

Each protocol's own use of them (SMTP's greeting check, IMAP/POP3's STARTTLS/STLS against real
peers) is tested with that protocol; these pin the shared rules once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import ClientAddress, HostPort
from relaygate.backend.connect import OneProtocolFactory, connect_with_failover, leg_tls_summary
from relaygate.backend.errors import (
    BackendError,
    BackendTLSError,
    BackendTLSNotOffered,
    BackendUnreachable,
)
from relaygate.backend.negotiate import starttls_to_backend
from relaygate.backend.policy import BackendPolicy
from relaygate.proxy_protocol import V2_SIGNATURE
from tests.certs import make_pki

CLIENT = ClientAddress("192.0.2.7", 40000, "127.0.0.1", 1143)
A = HostPort("127.0.0.1", 1001)
B = HostPort("127.0.0.1", 1002)


class PolicyTests(SynchronousTestCase):
    """L{BackendPolicy}: the section's keys, and a route's own values winning over them."""

    def test_tls_mode(self) -> None:
        """The route's C{backend_tls} wins; empty means the section's."""
        policy = BackendPolicy(tls="opportunistic")
        self.assertEqual(policy.tls_mode(""), "opportunistic")
        self.assertEqual(policy.tls_mode(None), "opportunistic")
        self.assertEqual(policy.tls_mode("required"), "required")

    def test_implicit_tls_only_for_implicit(self) -> None:
        """The endpoint gets a TLS creator for C{implicit} only."""
        policy = BackendPolicy()
        self.assertIsNone(policy.implicit_tls("required"))
        self.assertEqual(policy.implicit_tls("implicit"), policy.tls_for)

    def test_tls_for_verifies_the_backend(self) -> None:
        """The creator for a backend is a client creator (verifying against C{ca})."""
        pki = make_pki(self.mktemp())
        creator = BackendPolicy(ca=pki.ca.certificate).tls_for(A)
        self.assertTrue(IOpenSSLClientConnectionCreator.providedBy(creator))

    def test_proxy_preamble(self) -> None:
        """PROXY v1 and v2 headers name the client and the listener; none by default."""
        self.assertEqual(BackendPolicy().proxy_preamble(CLIENT), b"")
        self.assertEqual(
            BackendPolicy(proxy_protocol="v1").proxy_preamble(CLIENT),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1143\r\n",
        )
        v2 = BackendPolicy().proxy_preamble(CLIENT, "v2")
        self.assertEqual(
            v2,
            V2_SIGNATURE
            + b"\x21\x11\x00\x0c"
            + bytes([192, 0, 2, 7, 127, 0, 0, 1])
            + (40000).to_bytes(2, "big")
            + (1143).to_bytes(2, "big"),
        )
        self.assertEqual(BackendPolicy(proxy_protocol="v2").proxy_preamble(CLIENT, "none"), b"")

    def test_proxy_preamble_asks_for_the_addresses_only_to_send_them(self) -> None:
        """Given a callable, the policy calls it only when a header is sent."""
        asked: list[str] = []

        def client() -> ClientAddress:
            asked.append("asked")
            return CLIENT

        self.assertEqual(BackendPolicy().proxy_preamble(client), b"")
        self.assertEqual(asked, [])
        self.assertEqual(
            BackendPolicy(proxy_protocol="v1").proxy_preamble(client),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 1143\r\n",
        )
        self.assertEqual(asked, ["asked"])


class _Upgrade:
    """A scripted backend answer to STARTTLS; records whether it was asked."""

    def __init__(self, refusal: str | None = None, error: Exception | None = None) -> None:
        self.refusal = refusal
        self.error = error
        self.asked: list[object] = []

    async def __call__(self, creator: IOpenSSLClientConnectionCreator) -> str | None:
        self.asked.append(creator)
        if self.error is not None:
            raise self.error
        return self.refusal


def _creator(address: HostPort) -> Any:
    return f"creator for {address}"


class NegotiateTests(SynchronousTestCase):
    """L{starttls_to_backend}: the same rules for SMTP, IMAP and POP3."""

    def negotiate(self, mode: str, offered: bool, upgrade: _Upgrade) -> Deferred[bool]:
        return Deferred.fromCoroutine(starttls_to_backend(mode, A, offered, upgrade, _creator))

    def test_none_and_implicit_ask_nothing(self) -> None:
        """C{none} and C{implicit} never send STARTTLS."""
        for mode in ("none", "implicit"):
            upgrade = _Upgrade()
            self.assertFalse(self.successResultOf(self.negotiate(mode, True, upgrade)))
            self.assertEqual(upgrade.asked, [])

    def test_upgrade_with_the_backends_creator(self) -> None:
        """When offered, the backend is asked with the creator for its address."""
        for mode in ("opportunistic", "required"):
            upgrade = _Upgrade()
            self.assertTrue(self.successResultOf(self.negotiate(mode, True, upgrade)))
            self.assertEqual(upgrade.asked, ["creator for 127.0.0.1:1001"])

    def test_opportunistic_stays_plaintext(self) -> None:
        """Opportunistic: not offered or refused is plaintext."""
        upgrade = _Upgrade()
        self.assertFalse(self.successResultOf(self.negotiate("opportunistic", False, upgrade)))
        self.assertEqual(upgrade.asked, [])
        refusing = _Upgrade(refusal="454 4.7.0 not now")
        self.assertFalse(self.successResultOf(self.negotiate("opportunistic", True, refusing)))

    def test_required_not_offered_or_refused(self) -> None:
        """Required: not offered or refused fails with L{BackendTLSNotOffered}."""
        failure = self.failureResultOf(self.negotiate("required", False, _Upgrade()))
        self.assertEqual(str(failure.value), "127.0.0.1:1001 does not offer STARTTLS")
        failure = self.failureResultOf(self.negotiate("required", True, _Upgrade("454 no")))
        failure.trap(BackendTLSNotOffered)
        self.assertEqual(str(failure.value), "127.0.0.1:1001 refused STARTTLS: 454 no")
        failure = self.failureResultOf(self.negotiate("required", True, _Upgrade("")))
        self.assertEqual(str(failure.value), "127.0.0.1:1001 refused STARTTLS")

    def test_failed_handshake_never_falls_back(self) -> None:
        """A failed handshake fails even in opportunistic mode."""
        upgrade = _Upgrade(error=BackendTLSError("bad certificate"))
        self.failureResultOf(self.negotiate("opportunistic", True, upgrade), BackendTLSError)


class ConnectTests(SynchronousTestCase):
    """L{connect_with_failover} on a memory reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.made: list[Protocol] = []
        self.dropped: list[Protocol] = []

    def make(self) -> Protocol:
        protocol = Protocol()
        self.made.append(protocol)
        return protocol

    def connect(
        self,
        backends: tuple[HostPort, ...] = (A, B),
        check: Callable[[Protocol], Any] | None = None,
        preamble: bytes = b"",
    ) -> Deferred[tuple[Protocol, HostPort]]:
        return Deferred.fromCoroutine(
            connect_with_failover(
                self.reactor,
                backends,
                5.0,
                self.make,
                preamble=preamble,
                check=check,
                drop=self.dropped.append,
            )
        )

    def refuse(self, index: int) -> None:
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def accept(self, index: int) -> StringTransport:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport

    def test_failover_in_order(self) -> None:
        """The first backend refuses; the second one is used."""
        d = self.connect()
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 1001))
        self.refuse(0)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("127.0.0.1", 1002))
        self.accept(1)
        protocol, address = self.successResultOf(d)
        self.assertEqual((protocol, address), (self.made[1], B))
        self.assertEqual(self.dropped, [self.made[0]])

    def test_none_answers(self) -> None:
        """When no backend answers, L{BackendUnreachable} names the last one tried."""
        d = self.connect()
        self.refuse(0)
        self.refuse(1)
        failure = self.failureResultOf(d, BackendUnreachable)
        self.assertTrue(str(failure.value).startswith("127.0.0.1:1002: "))
        self.failureResultOf(self.connect(backends=()), BackendUnreachable)

    def test_check_moves_on(self) -> None:
        """A connection that fails the check is dropped and the next backend tried."""

        async def check(protocol: Protocol) -> None:
            if protocol is self.made[0]:
                raise BackendError("greeted with 554")

        d = self.connect(check=check)
        self.accept(0)
        self.accept(1)
        self.assertEqual(self.successResultOf(d)[1], B)
        self.assertEqual(self.dropped, [self.made[0]])

    def test_tls_failure_of_the_last(self) -> None:
        """When the last backend failed its TLS check, the error says TLS."""

        async def check(protocol: Protocol) -> None:
            raise BackendTLSError("bad certificate")

        d = self.connect(backends=(A,), check=check)
        self.accept(0)
        self.failureResultOf(d, BackendTLSError)

    def test_preamble_first(self) -> None:
        """The PROXY preamble is the first thing written on the connection."""
        d = self.connect(backends=(A,), preamble=b"PROXY UNKNOWN\r\n")
        transport = self.accept(0)
        self.successResultOf(d)
        self.assertEqual(transport.value(), b"PROXY UNKNOWN\r\n")

    def test_cancel(self) -> None:
        """Cancelling while a check waits drops that connection and tries no other."""
        waiting: Deferred[None] = Deferred()

        async def check(protocol: Protocol) -> None:
            await waiting

        d = self.connect(check=check)
        self.accept(0)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.dropped, [self.made[0]])
        self.assertEqual(len(self.reactor.tcpClients), 1)


class HelperTests(SynchronousTestCase):
    """The small pieces."""

    def test_one_protocol_factory(self) -> None:
        """The factory hands out the one protocol it was given, without logging."""
        protocol = Protocol()
        factory = OneProtocolFactory(protocol)
        self.assertIs(factory.buildProtocol(None), protocol)
        self.assertFalse(factory.noisy)

    def test_leg_tls_summary_plaintext(self) -> None:
        """A plaintext leg has no TLS summary."""
        self.assertEqual(leg_tls_summary(StringTransport()), "")
