"""The client-TLS gate every front holds: STARTTLS, the handshake timer, nginx's certificate check.

One L{ClientTLSGate} per session, owned by the SMTP, IMAP or POP3 front (composition, no base
class): the front asks it whether STARTTLS is on offer, hands it the transport to start TLS
(after dropping what the client pipelined in plaintext, DESIGN rule 5, CVE-2014-3556), and
acts on what L{ClientTLSGate.completed} says once the handshake is done:

 - L{AfterHandshake.GREET}: implicit TLS is up, the greeting may go out now;
 - L{AfterHandshake.READ}: STARTTLS is up, read the client's next command;
 - L{AfterHandshake.REFUSE}: implicit TLS with a certificate nginx refuses: send
   L{ClientTLSGate.refusal} instead of the greeting and close;
 - L{AfterHandshake.REFUSE_AT_NEXT_COMMAND}: STARTTLS with such a certificate: answer the next
   command with the refusal (the client is then reading, so the close cannot reset a command it
   is still writing), as nginx's C{ngx_mail_verify_cert} does;
 - L{AfterHandshake.IGNORED}: no handshake of ours was under way.

A client that does not finish its handshake within C{[tls] handshake_timeout} gets no reply
(none could reach it): the gate calls the front's C{expired}, which aborts the connection.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relaygate.routing.router import ClientTLS
from relaygate.tls.facts import CERTIFICATE_REPLIES, CertificateProblem
from relaygate.tls.handshake import HandshakeResult, HandshakeTimer
from relaygate.tls.server import ServerTLS


class AfterHandshake(enum.Enum):
    """What the front does once the client's TLS handshake is done (see the module docstring)."""

    GREET = "greet"
    READ = "read"
    REFUSE = "refuse"
    REFUSE_AT_NEXT_COMMAND = "refuse at next command"
    IGNORED = "ignored"


class ClientTLSGate:
    """The TLS state of one client session, and the rules that go with it."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        protocol: str,
        tls_mode: str,
        server_tls: ServerTLS | None,
        expired: Callable[[], None],
    ) -> None:
        """@param protocol: C{smtp}, C{imap} or C{pop3}: which of nginx's replies to use.
        @param tls_mode: the listener's C{tls}: C{none}, C{starttls}, C{starttls-required}
            or C{implicit}.
        @param expired: called when the handshake timer runs out."""
        self._clock = clock
        self._protocol = protocol
        self.tls_mode = tls_mode
        self._server_tls = server_tls
        self._expired = expired
        self._timer: HandshakeTimer | None = None
        self.handshaking = False
        """True from the start of a handshake until it completes."""
        self.secure = False
        """True once a TLS handshake with the client completed (implicit or STARTTLS)."""
        self.result = HandshakeResult(None, None)
        """What the handshake showed (facts and certificate verdict), once it is done."""
        self.pending: CertificateProblem | None = None
        """A certificate problem to answer at the next command (after STARTTLS)."""

    @property
    def implicit(self) -> bool:
        """Whether the listener speaks TLS from the first byte."""
        return self.tls_mode == "implicit"

    @property
    def required(self) -> bool:
        """True before TLS on a C{starttls-required} listener (logins are refused)."""
        return self.tls_mode == "starttls-required" and not self.secure

    @property
    def info(self) -> ClientTLS | None:
        """The client leg's TLS facts for the router (C{Auth-SSL-*}), after the handshake."""
        return self.result.info

    def listener_offers_starttls(self) -> bool:
        """Whether the listener has STARTTLS at all (whatever the session's state)."""
        return self._server_tls is not None and self.tls_mode in ("starttls", "starttls-required")

    def offers_starttls(self) -> bool:
        """Whether STARTTLS (STLS) may be used now: offered by the listener, TLS not up yet."""
        return self.listener_offers_starttls() and not self.secure

    def await_handshake(self) -> None:
        """Time the handshake now under way (implicit TLS, on connect)."""
        if self._timer is None:
            assert self._server_tls is not None
            self._timer = HandshakeTimer(
                self._clock, self._server_tls.handshake_timeout, self._expired
            )
        self.handshaking = True
        self._timer.start()

    def start_tls(self, transport: object, discarded: int | None, client: str) -> None:
        """Switch C{transport} to TLS after the front's positive answer to STARTTLS/STLS.

        @param discarded: how many bytes the client pipelined after the command (C{None} when
            nothing); the front has already dropped them (they came in plaintext), this only
            logs it.
        """
        if discarded is not None:
            self._log.info(
                "{protocol} client {client} pipelined {count} bytes after STARTTLS: discarded",
                protocol=self._protocol,
                client=client,
                count=discarded,
            )
        self.await_handshake()
        transport.startTLS(self._server_tls)  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Forget the timer (the connection is closing or gone)."""
        if self._timer is not None:
            self._timer.stop()

    def release(self) -> None:
        """The connection is gone: stop the timer and let go of the front's C{expired} (the
        front refers to this gate, so keeping it would make a reference cycle)."""
        self.stop()
        self._timer = None
        self._expired = _nothing

    def completed(self, transport: object, client: str) -> AfterHandshake:
        """The handshake is done: record its facts and say what the front does next."""
        if self._timer is None or not self.handshaking:
            self.stop()
            return AfterHandshake.IGNORED
        self.result = self._timer.finished(transport)
        self.handshaking = False
        self.secure = True
        problem = self.result.problem
        if problem is None:
            return AfterHandshake.GREET if self.implicit else AfterHandshake.READ
        info = self.result.info
        self._log.info(
            "{protocol} refusing {client}: client certificate {problem} ({verify})",
            protocol=self._protocol,
            client=client,
            problem=problem,
            verify=info.verify if info is not None else "",
        )
        if self.implicit:
            return AfterHandshake.REFUSE
        self.pending = problem
        return AfterHandshake.REFUSE_AT_NEXT_COMMAND

    def refusal(self) -> bytes:
        """nginx's reply for the refused certificate (C{CERTIFICATE_REPLIES})."""
        problem = self.result.problem
        assert problem is not None
        return CERTIFICATE_REPLIES[self._protocol][problem]

    def has_verified_certificate(self) -> bool:
        """Whether the client showed a certificate that verified (for SASL EXTERNAL)."""
        info = self.result.info
        return info is not None and info.verify == "SUCCESS"

    def summary(self) -> str:
        """The client leg for the access log's C{tls} field."""
        return self.result.summary()


def _nothing() -> None:
    """A released gate's handshake expiry: the connection is already gone."""
