"""The client-side TLS gate of an SMTP session: STARTTLS (RFC 3207) and implicit TLS.

What it decides: whether STARTTLS is offered or needed, the reply to a STARTTLS the session
cannot take, the handshake's time limit, and nginx's verdict on the client certificate. The
front composes one L{ClientTLSGate} and keeps the I/O (writing replies, starting TLS on its
transport); this is the one place to swap for a gate shared with the IMAP and POP3 fronts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relaygate.observe import SessionRecord
from relaygate.smtp.replies import R_NOT_AVAILABLE, R_STARTTLS_SYNTAX, R_TLS_ACTIVE, Reply
from relaygate.tls.facts import CERTIFICATE_REPLIES, CertificateProblem
from relaygate.tls.handshake import HandshakeResult, HandshakeTimer
from relaygate.tls.server import ServerTLS

_STARTTLS_MODES = ("starttls", "starttls-required")


class Verdict(enum.Enum):
    """What the front does when a client handshake finishes."""

    GREET = "greet"
    """Implicit TLS with an acceptable certificate: send the 220 greeting now."""
    GO_ON = "go on"
    """After STARTTLS: the client sends EHLO next."""
    REFUSE = "refuse"
    """Implicit TLS with a refused certificate: send L{ClientTLSGate.refusal} and close."""


class ClientTLSGate:
    """TLS between the client and the gateway, for one session.

    @param tls_mode: the listener's C{tls} (C{none}, C{implicit}, C{starttls},
        C{starttls-required}).
    @param expired: called when the client does not finish its handshake in time, after the
        session record says so; the front then aborts the connection (no reply can reach it).
    """

    _log = Logger()

    def __init__(
        self,
        tls_mode: str,
        server_tls: ServerTLS | None,
        clock: IReactorTime,
        session: Callable[[], SessionRecord],
        expired: Callable[[], None],
    ) -> None:
        self.tls_mode = tls_mode
        self._session = session
        self.server_tls = server_tls
        self._clock = clock
        self._expired = expired
        self._timer: HandshakeTimer | None = None
        self.secure = False
        self.certificate_problem: CertificateProblem | None = None
        """A refused certificate after STARTTLS: the next command gets the refusal."""

    @property
    def implicit(self) -> bool:
        """True on an implicit-TLS listener: the greeting waits for the handshake."""
        return self.tls_mode == "implicit"

    def offers_starttls(self) -> bool:
        """True when EHLO lists STARTTLS."""
        return self.tls_mode in _STARTTLS_MODES and self.server_tls is not None and not self.secure

    def tls_needed(self) -> bool:
        """True before TLS on a C{starttls-required} listener: MAIL and AUTH get 530."""
        return self.tls_mode == "starttls-required" and not self.secure

    def starttls_refusal(self, rest: bytes, starting: bool) -> Reply | None:
        """The error reply to C{STARTTLS rest}, or C{None} when TLS may start now."""
        if self.server_tls is None or self.tls_mode not in _STARTTLS_MODES:
            return R_TLS_ACTIVE if self.secure else R_NOT_AVAILABLE
        if self.secure or starting:
            return R_TLS_ACTIVE
        if rest:
            return R_STARTTLS_SYNTAX
        return None

    def start_timer(self) -> None:
        """Start timing a handshake (implicit TLS on connect, or after STARTTLS)."""
        if self._timer is None:
            assert self.server_tls is not None
            self._timer = HandshakeTimer(
                self._clock, self.server_tls.handshake_timeout, self._handshake_expired
            )
        self._timer.start()

    def stop_timer(self) -> None:
        """The connection is gone: stop timing."""
        if self._timer is not None:
            self._timer.stop()

    def _handshake_expired(self) -> None:
        session = self._session()
        session.end = "TLS handshake timeout"
        self._log.info("closing {client}: TLS handshake timeout", client=session.client)
        self._expired()

    def handshake_done(self, transport: object) -> tuple[Verdict, HandshakeResult]:
        """TLS is up (implicit, or after STARTTLS): check the client certificate as nginx
        does, and record the handshake's facts in the session record."""
        assert self._timer is not None
        result = self._timer.finished(transport)
        self.secure = True
        session = self._session()
        session.tls = result.summary()
        info, problem = result.info, result.problem
        if problem is None:
            return (Verdict.GREET if self.implicit else Verdict.GO_ON), result
        self._log.info(
            "refusing {client}: client certificate {problem} ({verify})",
            client=session.client,
            problem=problem,
            verify=info.verify if info is not None else "",
        )
        session.end = f"client certificate: {problem}"
        if self.implicit:
            return Verdict.REFUSE, result
        # nginx answers the next command: the client is then reading a reply, so the close
        # cannot reset a command it is still writing.
        self.certificate_problem = problem
        return Verdict.GO_ON, result

    @staticmethod
    def refusal(problem: CertificateProblem) -> bytes:
        """nginx's reply to a client whose certificate is refused."""
        return CERTIFICATE_REPLIES["smtp"][problem]
