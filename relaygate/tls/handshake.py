"""The client handshake timer and what a finished handshake showed, shared by every front."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from relaygate.routing.router import ClientTLS
from relaygate.tls.facts import CertificateProblem, certificate_problem, client_tls_info


@dataclass(frozen=True)
class HandshakeResult:
    """What a finished client handshake showed: the facts passed to the auth service and
    the logs, and nginx's verdict on the client certificate (C{None} when it passes)."""

    info: ClientTLS | None
    problem: CertificateProblem | None

    def summary(self) -> str:
        """The client leg for the access log's C{tls} field, e.g. C{TLSv1.3 CIPHER verify=...}."""
        if self.info is None:
            return ""
        verify = f" verify={self.info.verify}" if self.info.verify else ""
        return f"{self.info.protocol} {self.info.cipher}{verify}"


class HandshakeTimer:
    """Bounds a client's TLS handshake by C{[tls] handshake_timeout}, for every front.

    C{expired} runs when the client has not finished in time (no reply can reach it then);
    L{finished} stops the timer and reads what the handshake showed.
    """

    def __init__(self, clock: IReactorTime, timeout: float, expired: Callable[[], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._expired = expired
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Start timing a handshake (implicit TLS on connect, or after STARTTLS)."""
        self.stop()
        self._call = self._clock.callLater(self._timeout, self._fire)

    def stop(self) -> None:
        """Forget the timer (the handshake finished, or the connection is gone)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def finished(self, transport: object) -> HandshakeResult:
        """The handshake is done: stop timing it and read its facts and certificate verdict."""
        self.stop()
        return HandshakeResult(client_tls_info(transport), certificate_problem(transport))

    def _fire(self) -> None:
        self._call = None
        self._expired()
