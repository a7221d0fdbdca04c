"""Connect to the first backend of a route that answers: one failover loop for every protocol.

The protocols differ in what "answers" means (SMTP wants a 220 greeting before the next
backend is tried; IMAP and POP3 read their greeting during login), so the caller passes the
protocol to connect and an optional check of the fresh connection; the endpoints, the
implicit TLS and the PROXY preamble are the same for all (L{relaygate.connect.client_endpoint}).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IProtocol, IReactorTCP
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from typing_extensions import override

from relaygate.addresses import HostPort
from relaygate.backend.errors import BackendTLSError, BackendUnreachable
from relaygate.backend.policy import TLSCreatorFor
from relaygate.connect import client_endpoint
from relaygate.tls.facts import tls_facts

P = TypeVar("P", bound=IProtocol)

_log = Logger(namespace="relaygate.backend")


class OneProtocolFactory(Factory, Generic[P]):
    """Hands one prepared protocol to an endpoint (C{connectProtocol} without its logging)."""

    noisy = False

    def __init__(self, protocol: P) -> None:
        self._protocol = protocol

    @override
    def buildProtocol(self, addr: Any) -> P:  # type: ignore[override]
        return self._protocol


async def connect_with_failover(
    reactor: IReactorTCP,
    backends: Sequence[HostPort],
    connect_timeout: float,
    make: Callable[[], P],
    implicit_tls: TLSCreatorFor | None = None,
    preamble: bytes = b"",
    check: Callable[[P], Awaitable[None]] | None = None,
    drop: Callable[[P], None] | None = None,
) -> tuple[P, HostPort]:
    """Connect to the first of C{backends} that accepts (and passes C{check}), in order.

    @param make: builds a fresh protocol for each attempt.
    @param implicit_tls: for C{backend_tls = "implicit"}: the TLS creator for each backend.
    @param preamble: bytes sent first on each connection (a PROXY header), below any TLS.
    @param check: awaits what the protocol needs before the connection is usable (SMTP's
        greeting); its exception moves on to the next backend.
    @param drop: closes a protocol that failed its connect or its check.
    @raise BackendUnreachable: when no backend does; L{BackendTLSError} when the last one
        tried failed its TLS handshake.
    """
    last = ""
    tls_failed = False
    for backend in backends:
        protocol = make()
        try:
            creator = implicit_tls(backend) if implicit_tls is not None else None
            endpoint = client_endpoint(reactor, backend, connect_timeout, creator, preamble)
            await endpoint.connect(OneProtocolFactory(protocol))
            if check is not None:
                await check(protocol)
        except CancelledError:
            if drop is not None:
                drop(protocol)
            raise
        except Exception as e:
            if drop is not None:
                drop(protocol)
            last = f"{backend}: {e}"
            tls_failed = isinstance(e, BackendTLSError)
            _log.warn("backend {backend} unavailable: {error}", backend=str(backend), error=str(e))
            continue
        return protocol, backend
    if tls_failed:
        raise BackendTLSError(last)
    raise BackendUnreachable(last or "no backends")


def leg_tls_summary(transport: object) -> str:
    """A backend leg's TLS for logs (C{TLSv1.3 TLS_AES_256_GCM_SHA384 verified}), or C{""}."""
    facts = tls_facts(transport)
    if facts is None:
        return ""
    verified = "verified" if facts.verified else "unverified"
    return f"{facts.protocol} {facts.cipher} {verified}"
