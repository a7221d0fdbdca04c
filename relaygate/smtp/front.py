"""The SMTP front: a L{smtp.ESMTP} subclass that relays each transaction to one backend.

It keeps ESMTP's verb dispatch (C{do_<VERB>}, C{ext_<VERB>}), the greeting and the limits
(line length, errors, recipients, size, idle and session time, each with its reply); see
DESIGN.md, "Twisted pitfalls". Beside it: C{client_input} (pipelined input run in order,
RFC 2920), C{data_relay} (the body through L{BodyScanner} to the backend), C{backend_leg}
(routing, the backend connection and its TLS), C{client_tls} (the client-side TLS gate, driven
from the "client TLS" section below), C{submission} (AUTH, no I/O) and C{phase}.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
)
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.client_tls import AfterHandshake, ClientTLSGate
from relaygate.connect import (
    DEFAULT_READ_SIZE,
    RELAY_BUFFER_SIZE,
    set_no_delay,
    set_read_size,
)
from relaygate.lazy_timeout import LazyTimeoutMixin
from relaygate.observe import RecipientOutcome, SessionRecord, TransactionRecord
from relaygate.policy import Limits, limits_for
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Router
from relaygate.sasl import Credentials
from relaygate.smtp.auth_replies import R_AUTH_REQUIRED
from relaygate.smtp.backend import CONNECTION_DONE, RelayTransport, SMTPBackendClient
from relaygate.smtp.backend_leg import BackendLeg
from relaygate.smtp.backend_pool import BackendPool
from relaygate.smtp.client_input import InputRunner, LineError
from relaygate.smtp.data_relay import MessageRelay, open_message, outcome
from relaygate.smtp.greeting import R_EARLY_TALKER, GreetingDelay
from relaygate.smtp.operations import SMTPOperations
from relaygate.smtp.phase import Phase, SessionPhase
from relaygate.smtp.replies import (
    R_BAD_CHARS,
    R_HELO_SYNTAX,
    R_HELP,
    R_MAIL_SYNTAX,
    R_NEED_HELO,
    R_NEED_MAIL,
    R_NEED_RCPT,
    R_NEED_STARTTLS,
    R_NESTED_MAIL,
    R_NO_PARAMS,
    R_OK,
    R_RCPT_SYNTAX,
    R_READY_TLS,
    R_SENDER_OK,
    R_TOO_BIG,
    R_TOO_MANY_ERRORS,
    R_TOO_MANY_RCPTS,
    R_UNKNOWN,
    R_VRFY,
    Reply,
)
from relaygate.smtp.session_facts import (
    ClientFacts,
    Transaction,
    bracket_path,
    path_text,
    size_param,
)
from relaygate.smtp.settings import SMTPSettings
from relaygate.smtp.starttls import starttls_refusal
from relaygate.smtp.submission import Answer, Authenticate, Close, Mistake, Outcome, Submission
from relaygate.text import visible

_session_ids = itertools.count(1)


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class SMTPFront(SMTPOperations, LazyTimeoutMixin, smtp.ESMTP):
    """One client session: answers SMTP itself until a RCPT is routed, then relays."""

    _log = Logger()

    def __init__(
        self,
        settings: SMTPSettings,
        router: Router,
        reactor: IGatewayReactor,
        pool: BackendPool | None = None,
    ) -> None:
        super().__init__()
        self.host = settings.name
        self.timeout = settings.idle_timeout  # type: ignore[assignment]
        self.timeout_clock = reactor
        self._settings = settings
        self._router = router
        self._reactor = reactor
        self._phase = SessionPhase()
        self._runner = InputRunner(self, self._phase, settings.max_line_length)
        self._command_line = b""
        self._body: MessageRelay | None = None
        self._errors = 0
        self._facts = ClientFacts()
        self._tx: Transaction | None = None
        self._tls = ClientTLSGate(
            reactor, "smtp", settings.tls_mode, settings.server_tls, self._handshake_expired
        )
        self._greeting = GreetingDelay(reactor, settings.greeting_delay, self._greet)
        self._limits: Limits | None = None
        self._submission = Submission(settings, reactor)
        self._leg = BackendLeg(settings, router, reactor, self._facts, self._submission, pool)
        self.session: SessionRecord

    # -- connection ---------------------------------------------------------------------

    @override
    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self._facts.learn(transport)
        self._limits = limits_for(transport)
        self.session = SessionRecord(
            session_id=f"{os.getpid():x}.{next(_session_ids):x}",
            client=self._facts.label,
            listener=self._settings.listener,
            started=self._reactor.seconds(),
        )
        set_no_delay(transport)
        self._runner.attach(self.raw_transport)
        delay = bool(self._greeting.delay)
        self._phase.connection_made(implicit_tls=self._tls.implicit, delay_greeting=delay)
        if self._tls.implicit:
            # The greeting waits for the handshake (handshakeCompleted): a client whose
            # certificate is refused gets nginx's reply instead of it.
            self._tls.await_handshake()
            self.setTimeout(self.timeout)
        elif delay:
            self._greeting.start()
        else:
            super().connectionMade()
        # After the idle timer (when there is one yet): the session's limit shares its timer.
        self.set_hard_deadline(self._settings.session_timeout, self._session_expired)

    def _greet(self) -> None:
        if self._phase.current is Phase.GREETING:
            self._phase.greeted()
        smtp.ESMTP.connectionMade(self)

    def _early_talker(self) -> None:
        """Data before the delayed greeting: refuse it as nginx does."""
        self._greeting.stop()
        self.session.end = "talked before the greeting"
        self._log.info("closing {client}: talked before the greeting", client=self.session.client)
        self._reply_and_close(R_EARLY_TALKER)

    @override
    def greeting(self) -> bytes:
        name: bytes = self.host
        return name + b" ESMTP"

    @property
    def raw_transport(self) -> RelayTransport:
        """The client transport, with the producer methods the relay needs."""
        transport: Any = self.transport
        return transport  # type: ignore[no-any-return]

    @override
    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self._phase.connection_lost()
        self._runner.pauses.producer = None
        self.stop_timeouts()
        self._greeting.stop()
        self._tls.stop()
        if not self.session.end:
            self.session.end = (
                "client closed"
                if reason.check(net_error.ConnectionDone)
                else (f"connection lost: {reason.getErrorMessage()}")
            )
        self._clean_up()
        self.session.emit("smtp", self._reactor.seconds())
        # The session's helpers refer back to the front; letting go of those links lets
        # reference counts free the session, not the cyclic collector (docs/performance.md).
        # The runner keeps its front while a final dot's reply is still awaited.
        self._greeting.release()
        self._tls.release()
        self._runner.release()

    def _clean_up(self) -> None:
        """End the session's work: an unfinished message is cut off at the backend, never
        completed; a final dot already sent keeps its transaction until the backend answers.
        Runs on close and again on loss (then only what a final reply left: the backend)."""
        final = self._phase.final_pending
        self._runner.cancel()
        self._abort_body()
        if not final:
            if self._tx is None:
                # No transaction open at the backend: its connection may serve another session.
                self._leg.release()
            else:
                self._end_transaction("abandoned", self.session.end, reset_backend=False)
                self._leg.drop()

    def readConnectionLost(self) -> None:
        """The client shut down its sending side: answer all it sent, then close (as Postfix
        does); closing at once would lose a 250 and the client would send the message again."""
        self._runner.end_input()

    def writeConnectionLost(self) -> None:
        """Not used: the front never half-closes its own side."""

    def input_exhausted(self) -> None:
        """The half-closed client has every reply it is owed: close."""
        if self._phase.runs_input:
            if not self.session.end:
                self.session.end = "client closed"
            self._close()

    def _close(self) -> None:
        """End the session: clean up, then close once what was written is sent."""
        self._phase.close()
        self._clean_up()
        assert self.transport is not None
        self._runner.detach()
        self.transport.loseConnection()

    @override
    def timeoutConnection(self) -> None:
        if self._runner.pending is not None:
            # The gateway, not the client, is waiting (router or backend, each with its own
            # timeout): re-arm rather than stopping and restarting the timer for every command.
            self.setTimeout(self.timeout)
            return
        self.session.end = "idle timeout"
        self._reply_and_close(Reply(421, (b"4.4.2 " + self.host + b" Error: timeout exceeded",)))

    def _session_expired(self) -> None:
        self.session.end = "session timeout"
        self._reply_and_close(
            Reply(421, (b"4.4.2 " + self.host + b" Error: session time limit exceeded",))
        )

    def _reply_and_close(self, reply: Reply) -> None:
        self.send_reply(reply)
        self._close()

    # -- client TLS: the gate's I/O (STARTTLS, handshake, certificate refusal) ------------

    def _handshake_expired(self) -> None:
        """The client did not finish its TLS handshake in time: no reply can reach it."""
        self.session.end = "TLS handshake timeout"
        self._log.info("closing {client}: TLS handshake timeout", client=self.session.client)
        self._phase.close()
        self.raw_transport.abortConnection()

    def handshakeCompleted(self) -> None:
        """TLS is up (implicit, or after STARTTLS): the gate checks the client certificate."""
        self._phase.tls_done()
        after = self._tls.completed(self.transport, self.session.client)
        self._facts.tls = self._tls.info
        self.session.tls = self._tls.summary()
        if after in (AfterHandshake.REFUSE, AfterHandshake.REFUSE_AT_NEXT_COMMAND):
            self.session.end = f"client certificate: {self._tls.result.problem}"
        if after is AfterHandshake.REFUSE:
            self._refuse_certificate()
        elif after is AfterHandshake.GREET:
            self.sendCode(220, self.greeting())

    def _refuse_certificate(self) -> None:
        assert self.transport is not None
        self.transport.write(self._tls.refusal())
        self._close()

    def ext_STARTTLS(self, rest: bytes) -> None:
        refusal = starttls_refusal(self._tls, rest)
        if refusal is not None:
            self._protocol_error(refusal)
            return
        # RFC 3207 section 4.2, CVE-2014-3556: what the client sent after STARTTLS in the
        # same read is plaintext that must not run as if it came over TLS. Drop it, and
        # forget everything the plaintext session said; the client must EHLO again.
        dropped = self._runner.queue.discard()
        self._command_line = b""
        self._end_transaction("reset", "STARTTLS")
        self._leg.drop()
        self._facts.helo = None
        self._facts.extended = False
        self._submission.reset()
        self._sync_mode()
        self.send_reply(R_READY_TLS)
        self._phase.tls_started()
        assert self.transport is not None
        self._tls.start_tls(self.transport, dropped, self.session.client)

    # -- input --------------------------------------------------------------------------

    @override
    def dataReceived(self, data: bytes) -> None:
        self.session.bytes_in += len(data)
        phase = self._phase.current
        if phase is Phase.GREETING:
            self._early_talker()
            return
        if phase is Phase.CLOSING:
            return
        self._runner.received(data)

    def in_body(self) -> bool:
        """True while a message body is being relayed."""
        return self._body is not None

    def refuse_line(self, error: LineError) -> None:
        """Answer an over-long line or one with CR or NUL inside."""
        if error is LineError.TOO_LONG:
            reply = self._submission.line_too_long()
            self._sync_mode()
            self._protocol_error(reply)
        else:
            self._protocol_error(R_BAD_CHARS)

    @override
    def state_COMMAND(self, line: bytes) -> None:
        if self._tls.pending is not None:
            self._refuse_certificate()
            return
        parts = line.strip().split(None, 1)
        if not parts or not parts[0].isalpha() or not parts[0].isascii():
            self._protocol_error(R_UNKNOWN)
            return
        method = self.lookupMethod(parts[0])
        if method is None:
            self._log.debug("unknown command {verb!r}", verb=parts[0])
            self._protocol_error(R_UNKNOWN)
            return
        # nginx sends the client's MAIL and RCPT lines to the auth service exactly as typed.
        self._command_line = line
        method(parts[1].strip() if len(parts) == 2 else b"")

    # -- replies ------------------------------------------------------------------------

    def send_reply(self, reply: Reply) -> None:
        """Send C{reply} to the client in one write (the wrapper's: at the turn's end)."""
        if self._phase.connected:
            assert self.transport is not None
            self.transport.write(reply.to_wire())

    def _protocol_error(self, reply: Reply) -> None:
        """Answer a client mistake; too many of them end the session (nginx's max_errors)."""
        self._errors += 1
        if self._errors >= self._settings.max_errors:
            self.session.end = "too many errors"
            self._log.info("closing {client}: too many errors", client=self.session.client)
            self._reply_and_close(R_TOO_MANY_ERRORS)
            return
        self.send_reply(reply)

    def answer(self, reply: Reply | None) -> None:
        """A waiting command's reply, if it has one to send."""
        if reply is not None:
            self.send_reply(reply)

    # -- session commands -----------------------------------------------------------------

    def do_HELO(self, rest: bytes) -> None:
        self._hello(rest, extended=False)

    def do_EHLO(self, rest: bytes) -> None:
        self._hello(rest, extended=True)

    def _hello(self, rest: bytes, extended: bool) -> None:
        argument = rest.split(None, 1)[0] if rest else b""
        if not visible(argument):
            self._protocol_error(R_HELO_SYNTAX)
            return
        self._end_transaction("reset", "new EHLO/HELO")
        self._facts.helo = argument
        self._facts.extended = extended
        self.session.helo = argument.decode("ascii")
        if extended:
            starttls = (b"STARTTLS",) if self._tls.offers_starttls() else ()
            auth = self._submission.ehlo_keywords(self._facts, self._tls.required)
            self.send_reply(Reply(250, (self.host, *self._settings.extensions, *starttls, *auth)))
        else:
            self.send_reply(Reply(250, (self.host,)))

    def do_NOOP(self, rest: bytes) -> None:
        self.send_reply(R_OK)

    def do_VRFY(self, rest: bytes) -> None:
        self.send_reply(R_VRFY)

    def do_HELP(self, rest: bytes) -> None:
        self.send_reply(R_HELP)

    def ext_AUTH(self, rest: bytes) -> None:
        if self._tls.required:
            self._protocol_error(R_NEED_STARTTLS)
            return
        self._apply(self._submission.auth_command(rest, self._facts, self._tx is not None))

    @override
    def state_AUTH(self, line: bytes) -> None:
        # A continuation line of an AUTH exchange (RFC 4954 section 4).
        if not self._submission.in_exchange:
            self.mode = smtp.COMMAND
            self.state_COMMAND(line)
            return
        self._apply(self._submission.auth_response(line))

    def _sync_mode(self) -> None:
        """Twisted's line dispatch follows the AUTH exchange: C{state_AUTH} while one runs."""
        self.mode = smtp.AUTH if self._submission.in_exchange else smtp.COMMAND

    def _apply(self, outcome: Outcome) -> None:
        """Do what the submission logic decided."""
        self._sync_mode()
        if isinstance(outcome, Answer):
            if outcome.user is not None:
                self.session.user = outcome.user
            self.send_reply(outcome.reply)
        elif isinstance(outcome, Mistake):
            self._protocol_error(outcome.reply)
        elif isinstance(outcome, Close):
            self.session.end = outcome.end
            self._reply_and_close(outcome.reply)
        else:
            assert isinstance(outcome, Authenticate)
            self._runner.start(self._authenticate(outcome.credentials))

    async def _authenticate(self, credentials: Credentials) -> None:
        """Ask the router about C{credentials} and answer AUTH (or close)."""
        submission = self._submission
        self._apply(
            await submission.authenticate(credentials, self._facts, self._router, self._limits)
        )

    def do_QUIT(self, rest: bytes) -> None:
        self.session.end = "quit"
        self.send_reply(Reply(221, (b"2.0.0 " + self.host + b" Bye",)))
        self._close()

    def do_RSET(self, rest: bytes) -> None:
        tx = self._tx
        self._end_transaction("reset", "RSET", reset_backend=False)
        backend = self._leg.backend
        if tx is not None and tx.backend_mail is not None and backend is not None:
            self._runner.start(self._leg.relay_rset(backend))
        else:
            self.send_reply(R_OK)

    # -- the transaction ---------------------------------------------------------------------

    def do_MAIL(self, rest: bytes) -> None:
        if self._tls.required:
            self._protocol_error(R_NEED_STARTTLS)
            return
        if self._facts.helo is None:
            self._protocol_error(R_NEED_HELO)
            return
        if self._submission.needs_auth():
            self._protocol_error(R_AUTH_REQUIRED)
            return
        if self._tx is not None:
            self._protocol_error(R_NESTED_MAIL)
            return
        match = self.mail_re.match(rest)
        if match is None:
            self._protocol_error(R_MAIL_SYNTAX)
            return
        path = bracket_path(match.group("path"))
        params = (match.group("opts") or b"").strip()
        if params and not self._facts.extended:
            self._protocol_error(R_NO_PARAMS)
            return
        size = size_param(params)
        if size is not None and size > self._settings.max_message_size:
            self.send_reply(R_TOO_BIG)
            return
        record = TransactionRecord(started=self._reactor.seconds(), sender=path_text(path))
        self._tx = Transaction(
            mail_line=self._command_line, sender=path, params=params, record=record
        )
        self.send_reply(R_SENDER_OK)

    def do_RCPT(self, rest: bytes) -> None:
        tx = self._tx
        if tx is None:
            self._protocol_error(R_NEED_MAIL)
            return
        match = self.rcpt_re.match(rest)
        if match is None:
            self._protocol_error(R_RCPT_SYNTAX)
            return
        path = bracket_path(match.group("path"))
        params = (match.group("opts") or b"").strip()
        if tx.recipients >= self._settings.max_recipients:
            self._record_recipient(tx, path, R_TOO_MANY_RCPTS)
            self.send_reply(R_TOO_MANY_RCPTS)
            return
        tx.recipients += 1
        self._runner.start(self._rcpt(tx, self._command_line, path, params))

    async def _rcpt(self, tx: Transaction, line: bytes, path: bytes, params: bytes) -> Reply:
        reply = await self._leg.route_recipient(tx, line, path, params)
        if reply.ok:
            tx.accepted += 1
        self._record_recipient(tx, path, reply)
        return reply

    def _record_recipient(self, tx: Transaction, path: bytes, reply: Reply) -> None:
        tx.record.recipients.append(RecipientOutcome(path_text(path), reply.summary()))

    def do_DATA(self, rest: bytes) -> None:
        tx = self._tx
        if tx is None:
            self._protocol_error(R_NEED_MAIL)
            return
        if tx.broken is not None:
            reply = tx.broken
            self._end_transaction("failed", reply.summary())
            self.send_reply(reply)
            return
        backend = self._leg.backend
        if tx.accepted == 0 or backend is None:
            self._protocol_error(R_NEED_RCPT)
            return
        self._runner.start(self._data(tx, backend))

    def _data(self, tx: Transaction, backend: SMTPBackendClient) -> Deferred[Reply]:
        settings, pauses = self._settings, self._runner.pauses
        opened = open_message(
            backend, tx, settings.max_message_size, pauses, self._leg.drop, self.session.client
        )
        return opened.addCallback(self._opened)

    def _opened(self, opened: MessageRelay | tuple[str, Reply]) -> Reply:
        """The backend's answer to DATA: the relay is open (its 354 for the client), or the
        transaction ends with the backend's refusal or a lost connection."""
        if isinstance(opened, tuple):
            outcome, reply = opened
            self._end_transaction(outcome, reply.summary())
            return reply
        self._body = opened
        # The body moves in large reads; commands and replies in Twisted's usual ones.
        set_read_size(self.transport, RELAY_BUFFER_SIZE)
        return opened.go_ahead

    def feed_body(self, data: bytes) -> None:
        """Pass body bytes on to the backend; at end-of-data, wait for the backend's reply."""
        relay = self._body
        assert relay is not None
        rest = relay.feed(data)
        if rest is None:
            return
        self._body = None
        set_read_size(self.transport, DEFAULT_READ_SIZE)
        self._runner.queue.push_back(rest)
        self._runner.start(self._message_done(relay), final=relay.backend is not None)

    def _abort_body(self) -> None:
        relay, self._body = self._body, None
        if relay is not None:
            relay.abort()

    def _message_done(self, relay: MessageRelay) -> Deferred[Reply]:
        """The final reply to a message, and its transaction's record."""
        return relay.final_reply().addCallback(self._message_answered)

    def _message_answered(self, reply: Reply) -> Reply:
        if reply.ok:
            self.session.delivered += 1
        self._end_transaction(outcome(reply), reply.summary())
        if not self._phase.connected:
            self._leg.release()
        return reply

    def _end_transaction(self, outcome: str, final: str, reset_backend: bool = True) -> None:
        """Close the current transaction's record and log it; reset it at the backend too."""
        tx, self._tx = self._tx, None
        if tx is None:
            return
        if reset_backend and tx.backend_mail is not None and not tx.done:
            backend = self._leg.backend
            if backend is not None and backend.is_open:
                # Keeps the backend in step for the next transaction on this connection.
                backend.command(b"RSET").addErrback(lambda _: None)
        tx.finish(self.session, outcome, final, self._reactor.seconds())
