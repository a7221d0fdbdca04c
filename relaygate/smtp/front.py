"""The SMTP front: a L{smtp.ESMTP} subclass that relays each transaction to one backend.

It keeps ESMTP's verb dispatch (C{do_<VERB>}, C{ext_<VERB>}) and greeting, and replaces what a
relay can't use (see DESIGN.md, "Twisted pitfalls"):

- input: stock C{LineOnlyReceiver} runs every line of a read at once, so a pipelined command
  could run while an earlier one still waits on the router. Here lines are queued while a
  command is pending and run in order when it finishes (RFC 2920);
- DATA: the body moves to the backend in raw chunks through L{BodyScanner} with backpressure,
  and the reply to the final dot is the backend's own (never Twisted's catch-all 550);
- limits: line length, errors, recipients, size, idle and session time, each with its reply;
- TLS: STARTTLS (RFC 3207) drops whatever the client pipelined after the command and resets the
  session, as stock C{ext_STARTTLS} does not; implicit-TLS sessions are greeted only after the
  handshake; client certificates are checked as nginx does; backends get STARTTLS or implicit
  TLS per C{backend_tls}, verified, with a 4xx instead of any plaintext fallback.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.connect import set_no_delay
from relaygate.observe import RecipientOutcome, SessionRecord, TransactionRecord
from relaygate.routing.router import (
    Accept,
    AuthRequest,
    ClientTLS,
    Refuse,
    Router,
    RouterUnavailable,
)
from relaygate.smtp.backend import (
    CONNECTION_DONE,
    BackendClient,
    BackendError,
    BackendTLSError,
    BackendTLSNotOffered,
    RelayTransport,
    connect_backend,
)
from relaygate.smtp.data import BodyFault, BodyScanner
from relaygate.smtp.replies import (
    R_AUTH_SERVICE,
    R_BACKEND_DOWN,
    R_BACKEND_LOST,
    R_BACKEND_NO_TLS,
    R_BACKEND_TLS,
    R_BAD_CHARS,
    R_BARE_NEWLINE,
    R_HELO_SYNTAX,
    R_HELP,
    R_INTERNAL,
    R_MAIL_SYNTAX,
    R_NEED_HELO,
    R_NEED_MAIL,
    R_NEED_RCPT,
    R_NEED_STARTTLS,
    R_NESTED_MAIL,
    R_NO_PARAMS,
    R_NOT_AVAILABLE,
    R_OK,
    R_OTHER_BACKEND,
    R_RCPT_SYNTAX,
    R_READY_TLS,
    R_SENDER_OK,
    R_STARTTLS_SYNTAX,
    R_TLS_ACTIVE,
    R_TOO_BIG,
    R_TOO_MANY_ERRORS,
    R_TOO_MANY_RCPTS,
    R_UNKNOWN,
    R_VRFY,
    Reply,
)
from relaygate.smtp.sasl import R_AUTH_REQUIRED, R_BACKEND_LOGIN
from relaygate.smtp.submission import BackendLoginRefused, Submission
from relaygate.smtp.xclient import xclient_commands
from relaygate.tls.client import backend_tls_creator
from relaygate.tls.facts import CERTIFICATE_REPLIES, CertificateProblem
from relaygate.tls.handshake import HandshakeTimer
from relaygate.tls.server import ServerTLS

_session_ids = itertools.count(1)
_BUFFER_LIMIT = 65536


@dataclass(frozen=True)
class FrontSettings:
    """What each SMTP session needs from the config, computed once per listener."""

    name: bytes
    listener: str
    idle_timeout: float
    session_timeout: float
    connect_timeout: float
    backend_timeout: float
    max_line_length: int
    max_errors: int
    max_recipients: int
    max_message_size: int
    extensions: tuple[bytes, ...]
    xclient: bool
    tls_mode: str = "none"
    server_tls: ServerTLS | None = field(default=None, compare=False)
    backend_tls: str = "none"
    backend_ca: str = ""
    backend_certificate: str = ""
    backend_key: str = ""
    auth: tuple[str, ...] = ("none",)
    backend_auth: str = "none"
    max_auth_attempts: int = 3
    greeting_delay: float = 0.0
    backend_proxy_protocol: str = "none"

    @classmethod
    def from_config(
        cls, config: Config, listen: ListenConfig, server_tls: ServerTLS | None
    ) -> FrontSettings:
        """Take the SMTP front's settings for C{listen} from C{config}."""
        smtp_config = config.smtp
        extensions = []
        for name in smtp_config.extensions:
            if name == "SIZE":
                extensions.append(f"SIZE {smtp_config.max_message_size}".encode())
            else:
                extensions.append(name.encode())
        return cls(
            name=config.server.name.encode("idna"),
            listener=str(listen.address),
            idle_timeout=config.server.idle_timeout,
            session_timeout=config.server.session_timeout,
            connect_timeout=config.server.connect_timeout,
            backend_timeout=smtp_config.backend_timeout,
            max_line_length=smtp_config.max_line_length,
            max_errors=smtp_config.max_errors,
            max_recipients=smtp_config.max_recipients,
            max_message_size=smtp_config.max_message_size,
            extensions=tuple(extensions),
            xclient=smtp_config.xclient,
            tls_mode=listen.tls,
            server_tls=server_tls,
            backend_tls=smtp_config.backend_tls,
            backend_ca=smtp_config.backend_ca,
            backend_certificate=smtp_config.backend_certificate,
            backend_key=smtp_config.backend_key,
            auth=smtp_config.auth,
            backend_auth=smtp_config.backend_auth,
            max_auth_attempts=smtp_config.max_auth_attempts,
            greeting_delay=smtp_config.greeting_delay,
            backend_proxy_protocol=smtp_config.backend_proxy_protocol,
        )

    def backend_tls_for(self, backend: HostPort) -> IOpenSSLClientConnectionCreator:
        """The verifying TLS creator for C{backend}: its host is the name (or IP) checked."""
        return backend_tls_creator(
            backend.host, self.backend_ca, self.backend_certificate, self.backend_key
        )


@dataclass
class _Transaction:
    """One mail transaction: from MAIL to the final reply (or RSET)."""

    mail_line: bytes
    sender: bytes
    params: bytes
    record: TransactionRecord
    route: tuple[HostPort, ...] | None = None
    backend_mail: Reply | None = None
    broken: Reply | None = None
    accepted: int = 0
    recipients: int = 0
    done: bool = False


@implementer(IPushProducer)
class _ClientReader:
    """Registered on the backend's transport during DATA: its pauses pause the client's reads."""

    def __init__(self, front: SMTPFront) -> None:
        self._front = front

    def pauseProducing(self) -> None:
        self._front.pause_reading("backend")

    def resumeProducing(self) -> None:
        self._front.resume_reading("backend")

    def stopProducing(self) -> None:
        # The backend went away; the front learns it from the backend client itself.
        self._front.resume_reading("backend")


@dataclass
class _Body:
    """A message body in flight."""

    scanner: BodyScanner
    backend: BackendClient | None
    transaction: _Transaction


@implementer(IHandshakeListener)
class SMTPFront(smtp.ESMTP):
    """One client session: answers SMTP itself until a RCPT is routed, then relays."""

    _log = Logger()

    def __init__(self, settings: FrontSettings, router: Router, reactor: Any) -> None:
        super().__init__()
        self.host = settings.name
        self.timeout = settings.idle_timeout  # type: ignore[assignment]
        self.callLater = reactor.callLater  # type: ignore[method-assign]
        self._settings = settings
        self._router = router
        self._reactor = reactor
        self._buffer = b""
        self._command_line = b""
        self._discarding = False
        self._in_loop = False
        self._pending: Deferred[None] | None = None
        self._body: _Body | None = None
        self._paused: set[str] = set()
        self._errors = 0
        self._helo_arg: bytes | None = None
        self._extended = False
        self._tx: _Transaction | None = None
        self._draining = False
        self._backend: BackendClient | None = None
        self._backend_route: tuple[HostPort, ...] | None = None
        self._backend_tls_mode = ""
        self._secure = False
        self._tls_starting = False
        self._handshake: HandshakeTimer | None = None
        self._certificate_problem: CertificateProblem | None = None
        self._client_tls: ClientTLS | None = None
        self._connected = False
        self._closing = False
        self._session_timer: IDelayedCall | None = None
        self._awaiting_final = False
        self._client_ip = ""
        self._client_port = 0
        self._submission = Submission(self)
        self.session: SessionRecord

    # -- connection ---------------------------------------------------------------------

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self._connected = True
        peer = self.transport.getPeer()
        self._client_ip = str(getattr(peer, "host", ""))
        self._client_port = int(getattr(peer, "port", 0))
        self._submission.connected()
        self.session = SessionRecord(
            session_id=f"{os.getpid():x}.{next(_session_ids):x}",
            client=f"{self._client_ip}:{self._client_port}",
            listener=self._settings.listener,
            started=self._reactor.seconds(),
        )
        set_no_delay(self.transport)
        self._session_timer = self.callLater(self._settings.session_timeout, self._session_expired)
        if self._settings.tls_mode == "implicit":
            # The greeting waits for the handshake (handshakeCompleted): a client whose
            # certificate is refused gets nginx's reply instead of it.
            self._tls_starting = True
            self._start_handshake_timer()
            self.setTimeout(self.timeout)
            return
        if self._submission.delay_greeting():
            return
        super().connectionMade()

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
        self._connected = False
        self.setTimeout(None)
        if self._session_timer is not None and self._session_timer.active():
            self._session_timer.cancel()
        self._stop_handshake_timer()
        self._submission.disconnected()
        if not self.session.end:
            self.session.end = (
                "client closed"
                if reason.check(net_error.ConnectionDone)
                else (f"connection lost: {reason.getErrorMessage()}")
            )
        if self._pending is not None and not self._awaiting_final:
            self._pending.cancel()
        self._abort_body()
        if not self._awaiting_final:
            self._end_transaction("abandoned", self.session.end, reset_backend=False)
            self._drop_backend()
        self.session.emit("smtp", self._reactor.seconds())

    @override
    def timeoutConnection(self) -> None:
        if self._pending is not None:
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

    # -- operations (docs/operations.md) --------------------------------------------------

    def ops_facts(self) -> dict[str, str]:
        """What the sessions view shows of this session beyond its bytes."""
        backend = self._backend.info.address if self._backend is not None else ""
        facts = {"user": self.session.user, "backend": backend}
        if self._body is not None:
            facts["state"] = "data"
        return facts

    def ops_drain(self) -> None:
        """SIGTERM: an idle session gets 421 now; one in a transaction finishes it first and
        gets the 421 at its next command (L{state_COMMAND})."""
        self._draining = True
        if self._tx is None:
            self._shut_down()

    def ops_close(self, reason: str) -> None:
        """An administrator's kick (C{kick}), or the drain's deadline: 421 and close."""
        if reason != "kick":
            self._shut_down()
            return
        self.session.end = "closed by the administrator"
        text = b"4.7.0 " + self.host + b" Session closed by the administrator"
        self._reply_and_close(Reply(421, (text,)))

    def _shut_down(self) -> None:
        self.session.end = "shutting down"
        self._reply_and_close(Reply(421, (b"4.3.2 " + self.host + b" Service shutting down",)))

    # -- TLS ----------------------------------------------------------------------------

    def _start_handshake_timer(self) -> None:
        if self._handshake is None:
            assert self._settings.server_tls is not None
            self._handshake = HandshakeTimer(
                self._reactor, self._settings.server_tls.handshake_timeout, self._handshake_expired
            )
        self._handshake.start()

    def _stop_handshake_timer(self) -> None:
        if self._handshake is not None:
            self._handshake.stop()

    def _handshake_expired(self) -> None:
        """The client did not finish its TLS handshake in time: no reply can reach it."""
        self.session.end = "TLS handshake timeout"
        self._log.info("closing {client}: TLS handshake timeout", client=self.session.client)
        self._closing = True
        self.raw_transport.abortConnection()

    def handshakeCompleted(self) -> None:
        """TLS is up (implicit, or after STARTTLS): check the client certificate, record facts."""
        assert self._handshake is not None
        result = self._handshake.finished(self.transport)
        self._tls_starting = False
        self._secure = True
        info, problem = result.info, result.problem
        self._client_tls = info
        self.session.tls = result.summary()
        if problem is not None:
            self._log.info(
                "refusing {client}: client certificate {problem} ({verify})",
                client=self.session.client,
                problem=problem,
                verify=info.verify if info is not None else "",
            )
            self.session.end = f"client certificate: {problem}"
            if self._settings.tls_mode == "implicit":
                self._refuse_certificate(problem)
            else:
                # nginx answers the next command: the client is then reading a reply, so the
                # close cannot reset a command it is still writing.
                self._certificate_problem = problem
            return
        if self._settings.tls_mode == "implicit":
            self.sendCode(220, self.greeting())

    def _refuse_certificate(self, problem: CertificateProblem) -> None:
        assert self.transport is not None
        self.transport.write(CERTIFICATE_REPLIES["smtp"][problem])
        self._close()

    def _offers_starttls(self) -> bool:
        return (
            self._settings.tls_mode in ("starttls", "starttls-required")
            and self._settings.server_tls is not None
            and not self._secure
        )

    def _tls_needed(self) -> bool:
        """True before TLS on a C{starttls-required} listener: MAIL and AUTH get 530."""
        return self._settings.tls_mode == "starttls-required" and not self._secure

    def _close(self) -> None:
        """End the session: an unfinished message is cut off at the backend, never completed."""
        self._closing = True
        if self._pending is not None and not self._awaiting_final:
            self._pending.cancel()
        self._abort_body()
        if not self._awaiting_final:
            self._end_transaction("abandoned", self.session.end, reset_backend=False)
            self._drop_backend()
        assert self.transport is not None
        self.transport.loseConnection()

    def _abort_body(self) -> None:
        body, self._body = self._body, None
        if body is not None and body.backend is not None:
            self._stop_body_relay(body)
            body.backend.abort()
            body.backend = None

    # -- input --------------------------------------------------------------------------

    @override
    def dataReceived(self, data: bytes) -> None:
        self.session.bytes_in += len(data)
        if self._submission.early_talker():
            return
        if self._pending is None:
            self.resetTimeout()
        if self._body is not None and self._pending is None and not self._buffer:
            # The DATA fast path: straight to the scanner, no copy into the line buffer.
            self._feed_body(data)
        else:
            self._buffer += data
        self._process_input()

    def _process_input(self) -> None:
        """Run buffered input in order until a command is pending or input runs out."""
        if self._in_loop:
            return
        self._in_loop = True
        try:
            while self._pending is None and self._connected and not self._closing:
                if self._body is not None:
                    if not self._buffer:
                        break
                    data, self._buffer = self._buffer, b""
                    self._feed_body(data)
                    continue
                found, line = self._next_line()
                if not found:
                    break
                if line is not None:
                    self.lineReceived(line)
        finally:
            self._in_loop = False
        if len(self._buffer) > _BUFFER_LIMIT and self._pending is not None:
            self.pause_reading("pipeline")
        elif "pipeline" in self._paused and len(self._buffer) <= _BUFFER_LIMIT:
            self.resume_reading("pipeline")

    def _next_line(self) -> tuple[bool, bytes | None]:
        """Take the next line from the buffer: (False, None) when none is complete yet,
        (True, None) when one was consumed and answered as an error, else (True, line)."""
        limit = self._settings.max_line_length
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > limit:
                # Answer at once, then drop bytes until the line's end: never buffer it all.
                if not self._discarding:
                    self._protocol_error(self._submission.line_too_long())
                self._discarding = True
                self._buffer = b""
            return False, None
        line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        if self._discarding:
            self._discarding = False
            return True, None
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > limit:
            self._protocol_error(self._submission.line_too_long())
            return True, None
        if b"\r" in line or b"\0" in line:
            self._protocol_error(R_BAD_CHARS)
            return True, None
        return True, line

    @override
    def state_COMMAND(self, line: bytes) -> None:
        if self._draining and self._tx is None:
            self._shut_down()
            return
        if self._certificate_problem is not None:
            self._refuse_certificate(self._certificate_problem)
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

    def pause_reading(self, reason: str) -> None:
        """Stop reading from the client for C{reason} (until L{resume_reading} for it)."""
        if not self._paused and self.transport is not None:
            self.raw_transport.pauseProducing()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        """Lift the pause for C{reason}; reading resumes when no reason is left."""
        if reason in self._paused:
            self._paused.discard(reason)
            transport = self.transport
            if not self._paused and transport is not None and self._connected:
                if not getattr(transport, "disconnecting", False):
                    self.raw_transport.resumeProducing()

    # -- replies ------------------------------------------------------------------------

    def send_reply(self, reply: Reply) -> None:
        """Send C{reply} to the client in one write (multi-line replies keep their lines)."""
        if self._connected:
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

    def _run(self, work: Coroutine[Any, Any, Reply | None]) -> None:
        """Run a command that waits (router, backend); later input waits for its reply."""
        done = Deferred.fromCoroutine(work)
        self._pending = done.addCallbacks(self._finished, self._crashed)
        self._pending.addBoth(self._resume)

    def _finished(self, reply: Reply | None) -> None:
        if reply is not None:
            self.send_reply(reply)

    def _crashed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        self._log.failure("unexpected error in an SMTP session", failure)
        self.send_reply(R_INTERNAL)

    def _resume(self, _: object) -> None:
        self._pending = None
        self._awaiting_final = False
        if self._connected:
            # The client's silence starts now: what it waited for was the gateway.
            self.resetTimeout()
            self._process_input()

    # -- session commands -----------------------------------------------------------------

    def do_HELO(self, rest: bytes) -> None:
        self._hello(rest, extended=False)

    def do_EHLO(self, rest: bytes) -> None:
        self._hello(rest, extended=True)

    def _hello(self, rest: bytes, extended: bool) -> None:
        argument = rest.split(None, 1)[0] if rest else b""
        if not argument or not all(33 <= c < 127 for c in argument):
            self._protocol_error(R_HELO_SYNTAX)
            return
        self._end_transaction("reset", "new EHLO/HELO")
        self._helo_arg = argument
        self._extended = extended
        self.session.helo = argument.decode("ascii")
        if extended:
            starttls = (b"STARTTLS",) if self._offers_starttls() else ()
            auth = self._submission.ehlo_keywords()
            self.send_reply(Reply(250, (self.host, *self._settings.extensions, *starttls, *auth)))
        else:
            self.send_reply(Reply(250, (self.host,)))

    @override
    def extensions(self) -> dict[bytes, list[bytes] | None]:
        result: dict[bytes, list[bytes] | None] = {}
        for extension in self._settings.extensions:
            keyword, _, params = extension.partition(b" ")
            result[keyword] = params.split() if params else None
        if self._offers_starttls():
            result[b"STARTTLS"] = None
        return result

    def do_NOOP(self, rest: bytes) -> None:
        self.send_reply(R_OK)

    def do_VRFY(self, rest: bytes) -> None:
        self.send_reply(R_VRFY)

    def do_HELP(self, rest: bytes) -> None:
        self.send_reply(R_HELP)

    def ext_STARTTLS(self, rest: bytes) -> None:
        server_tls = self._settings.server_tls
        if server_tls is None or self._settings.tls_mode not in ("starttls", "starttls-required"):
            self._protocol_error(R_TLS_ACTIVE if self._secure else R_NOT_AVAILABLE)
            return
        if self._secure or self._tls_starting:
            self._protocol_error(R_TLS_ACTIVE)
            return
        if rest:
            self._protocol_error(R_STARTTLS_SYNTAX)
            return
        # RFC 3207 section 4.2, CVE-2014-3556: what the client sent after STARTTLS in the
        # same read is plaintext that must not run as if it came over TLS. Drop it, and
        # forget everything the plaintext session said; the client must EHLO again.
        if self._buffer or self._discarding:
            self._log.info(
                "{client} pipelined {count} bytes after STARTTLS: discarded",
                client=self.session.client,
                count=len(self._buffer),
            )
        self._buffer = b""
        self._command_line = b""
        self._discarding = False
        self._end_transaction("reset", "STARTTLS")
        self._drop_backend()
        self._helo_arg = None
        self._extended = False
        self._submission.reset()
        self.send_reply(R_READY_TLS)
        self._tls_starting = True
        self._start_handshake_timer()
        assert self.transport is not None
        self.transport.startTLS(server_tls)  # type: ignore[attr-defined]

    def ext_AUTH(self, rest: bytes) -> None:
        if self._tls_needed():
            self._protocol_error(R_NEED_STARTTLS)
            return
        self._submission.auth_command(rest)

    @override
    def state_AUTH(self, line: bytes) -> None:
        # A continuation line of an AUTH exchange (RFC 4954 section 4).
        self._submission.auth_response(line)

    def do_QUIT(self, rest: bytes) -> None:
        self.session.end = "quit"
        self.send_reply(Reply(221, (b"2.0.0 " + self.host + b" Bye",)))
        self._close()

    def do_RSET(self, rest: bytes) -> None:
        tx = self._tx
        self._end_transaction("reset", "RSET", reset_backend=False)
        if tx is not None and tx.backend_mail is not None and self._backend is not None:
            self._run(self._relay_rset(self._backend))
        else:
            self.send_reply(R_OK)

    async def _relay_rset(self, backend: BackendClient) -> Reply:
        try:
            return await backend.command(b"RSET")
        except BackendError:
            self._drop_backend()
            return R_OK

    # -- the transaction ---------------------------------------------------------------------

    def do_MAIL(self, rest: bytes) -> None:
        if self._tls_needed():
            self._protocol_error(R_NEED_STARTTLS)
            return
        if self._helo_arg is None:
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
        path = _bracket(match.group("path"))
        params = (match.group("opts") or b"").strip()
        if params and not self._extended:
            self._protocol_error(R_NO_PARAMS)
            return
        size = _size_param(params)
        if size is not None and size > self._settings.max_message_size:
            self.send_reply(R_TOO_BIG)
            return
        record = TransactionRecord(started=self._reactor.seconds(), sender=_text(path[1:-1]))
        self._tx = _Transaction(
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
        path = _bracket(match.group("path"))
        params = (match.group("opts") or b"").strip()
        if tx.recipients >= self._settings.max_recipients:
            self._record_recipient(tx, path, R_TOO_MANY_RCPTS)
            self.send_reply(R_TOO_MANY_RCPTS)
            return
        tx.recipients += 1
        self._run(self._rcpt(tx, self._command_line, path, params))

    async def _rcpt(self, tx: _Transaction, line: bytes, path: bytes, params: bytes) -> Reply:
        reply = await self._route_recipient(tx, line, path, params)
        if reply.ok:
            tx.accepted += 1
        self._record_recipient(tx, path, reply)
        return reply

    def _record_recipient(self, tx: _Transaction, path: bytes, reply: Reply) -> None:
        tx.record.recipients.append(RecipientOutcome(_text(path[1:-1]), reply.summary()))

    async def _route_recipient(
        self, tx: _Transaction, line: bytes, path: bytes, params: bytes
    ) -> Reply:
        if tx.broken is not None:
            return tx.broken
        request = AuthRequest(
            protocol="smtp",
            client_ip=self._client_ip,
            client_port=self._client_port,
            method="none",
            client_host="[UNAVAILABLE]",
            helo=self._helo_arg or b"",
            mail_from=tx.mail_line,
            rcpt_to=line,
            recipient=path[1:-1],
            tls=self._client_tls,
            proxy=self._submission.proxy,
        )
        try:
            # After AUTH, the login's routing decision serves every transaction (as in nginx).
            login = self._submission.login
            decision = login.decision if login is not None else await self._router.lookup(request)
        except RouterUnavailable as e:
            self._log.warn(
                "router unavailable for {client}: {error}",
                client=self.session.client,
                error=str(e),
            )
            return R_AUTH_SERVICE
        if isinstance(decision, Refuse):
            if decision.wait:
                await deferLater(self._reactor, decision.wait)
            return _refusal(decision)
        assert isinstance(decision, Accept)
        if tx.route is not None and decision.backends != tx.route:
            return R_OTHER_BACKEND
        rcpt_command = b"RCPT TO:" + path + (b" " + params if params else b"")
        try:
            if tx.backend_mail is None:
                mode = decision.backend_tls or self._settings.backend_tls
                self._submission.backend_proxy_protocol = (
                    decision.backend_proxy_protocol or self._settings.backend_proxy_protocol
                )
                backend = await self._backend_for(decision.backends, mode)
                tx.route = decision.backends
                tx.record.backend = backend.info.address
                tx.record.backend_tls = backend.info.tls
                mail_command = b"MAIL FROM:" + tx.sender + (b" " + tx.params if tx.params else b"")
                if b"PIPELINING" in backend.extensions:
                    mail_reply, rcpt_reply = backend.commands([mail_command, rcpt_command])
                    try:
                        tx.backend_mail = await mail_reply
                    except BackendError:
                        # The RCPT's reply failed the same way: consume it, or it is logged as
                        # an unhandled error in Deferred.
                        rcpt_reply.addErrback(lambda _: None)
                        raise
                    reply = await rcpt_reply
                else:
                    tx.backend_mail = await backend.command(mail_command)
                    if not tx.backend_mail.ok:
                        return tx.backend_mail
                    reply = await backend.command(rcpt_command)
                return reply if tx.backend_mail.ok else tx.backend_mail
            if not tx.backend_mail.ok:
                return tx.backend_mail
            assert self._backend is not None
            return await self._backend.command(rcpt_command)
        except BackendLoginRefused as e:
            self._log.warn(
                "backend login failed for {client}: {error}",
                client=self.session.client,
                error=str(e),
            )
            self._drop_backend()
            return R_BACKEND_LOGIN
        except BackendTLSError as e:
            self._log.warn(
                "backend TLS failed for {client}: {error}",
                client=self.session.client,
                error=str(e),
            )
            self._drop_backend()
            return R_BACKEND_NO_TLS if isinstance(e, BackendTLSNotOffered) else R_BACKEND_TLS
        except BackendError as e:
            self._log.warn(
                "backend failed for {client}: {error}", client=self.session.client, error=str(e)
            )
            self._drop_backend()
            if tx.route is not None:
                tx.broken = R_BACKEND_LOST
                return R_BACKEND_LOST
            return R_BACKEND_DOWN

    async def _backend_for(self, route: tuple[HostPort, ...], tls_mode: str) -> BackendClient:
        """The open backend connection for C{route}, or a new one: TLS, then XCLIENT.

        @param tls_mode: C{backend_tls} for this route (C{none}, C{opportunistic},
            C{required} or C{implicit}).
        @raise BackendTLSError: TLS was required (or offered) and could not be set up.
        """
        if (
            self._backend is not None
            and self._backend.is_open
            and self._backend_route == route
            and self._backend_tls_mode == tls_mode
        ):
            return self._backend
        self._drop_backend()
        backend, address = await connect_backend(
            self._reactor,
            route,
            self.host,
            self._settings.connect_timeout,
            self._settings.backend_timeout,
            implicit_tls=self._settings.backend_tls_for if tls_mode == "implicit" else None,
            preamble=self._submission.proxy_preamble,
        )
        self._backend, self._backend_route = backend, route
        self._backend_tls_mode = tls_mode
        await self._hello_backend(backend)
        if tls_mode in ("opportunistic", "required"):
            await self._secure_backend(backend, address, tls_mode)
        self._submission.check_backend_login(backend, address)
        if self._settings.xclient and b"XCLIENT" in backend.extensions:
            commands = xclient_commands(
                backend.extensions[b"XCLIENT"] or b"", self._xclient_attributes()
            )
            for command in commands:
                # Each XCLIENT resets the backend's session: it greets again and wants EHLO.
                reply = await backend.command(command)
                if reply.code != 220:
                    self._log.error(
                        "backend {backend} refused XCLIENT: {reply}",
                        backend=str(address),
                        reply=reply.summary(),
                    )
                    raise BackendError(f"XCLIENT refused: {reply.summary()}")
                await self._hello_backend(backend)
        await self._submission.log_in_backend(backend, address)
        return backend

    async def _secure_backend(self, backend: BackendClient, address: HostPort, mode: str) -> None:
        """STARTTLS to the backend, verified, then EHLO again (RFC 3207 section 4.2).

        C{required}: no STARTTLS offered, a refusal or a failed handshake raise
        L{BackendTLSError}, before anything but EHLO was sent. C{opportunistic}: a backend
        that does not offer STARTTLS (or refuses it) is used in plaintext, but one whose
        handshake fails is not: that connection is gone, and a retry in plaintext is what an
        attacker breaking handshakes would want.
        """
        if b"STARTTLS" not in backend.extensions:
            if mode == "required":
                raise BackendTLSNotOffered(f"{address} does not offer STARTTLS")
            return
        reply = await backend.start_tls(self._settings.backend_tls_for(address))
        if reply.code != 220:
            if mode == "required":
                raise BackendTLSNotOffered(f"{address} refused STARTTLS: {reply.summary()}")
            return
        await backend.handshake()
        await self._hello_backend(backend)

    async def _hello_backend(self, backend: BackendClient) -> None:
        reply = await backend.command(b"EHLO " + self.host)
        if reply.code == 250:
            backend.parse_extensions(reply)
            return
        reply = await backend.command(b"HELO " + self.host)
        if not reply.ok:
            raise BackendError(f"HELO refused: {reply.summary()}")
        backend.extensions = {}

    def _xclient_attributes(self) -> list[tuple[bytes, bytes]]:
        """What the backend learns about the client through XCLIENT (Postfix's names)."""
        ip = self._client_ip
        address = f"IPV6:{ip}" if ":" in ip else ip
        return [
            (b"ADDR", address.encode("ascii")),
            (b"PORT", str(self._client_port).encode("ascii")),
            (b"NAME", b"[UNAVAILABLE]"),
            (b"PROTO", b"ESMTP" if self._extended else b"SMTP"),
            (b"HELO", self._helo_arg or b""),
            *self._submission.xclient_attributes(),
        ]

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
        if tx.accepted == 0 or self._backend is None:
            self._protocol_error(R_NEED_RCPT)
            return
        self._run(self._data(tx, self._backend))

    async def _data(self, tx: _Transaction, backend: BackendClient) -> Reply | None:
        try:
            reply = await backend.command(b"DATA")
        except BackendError:
            self._drop_backend()
            self._end_transaction("failed", R_BACKEND_LOST.summary())
            return R_BACKEND_LOST
        if reply.code != 354:
            self._end_transaction("refused", reply.summary())
            return reply
        self._body = _Body(BodyScanner(self._settings.max_message_size), backend, tx)
        backend.raw_transport.registerProducer(_ClientReader(self), True)
        self.send_reply(reply)
        return None

    def _feed_body(self, data: bytes) -> None:
        """Pass body bytes on to the backend; at end-of-data, wait for the backend's reply."""
        body = self._body
        assert body is not None
        chunk = body.scanner.feed(data)
        if body.backend is not None:
            if body.scanner.fault is not None or not body.backend.is_open:
                # Never let a refused message reach its end-of-data at the backend: drop it.
                self._log.info(
                    "message from {client} refused: {fault}",
                    client=self.session.client,
                    fault=body.scanner.fault.value if body.scanner.fault else "backend lost",
                )
                self._stop_body_relay(body)
                body.backend.abort()
                body.backend = None
                self._drop_backend()
            else:
                assert body.backend.transport is not None
                body.backend.transport.write(chunk.body)
        if chunk.rest is None:
            return
        self._body = None
        self._buffer = chunk.rest + self._buffer
        if body.backend is not None:
            self._stop_body_relay(body)
        self._awaiting_final = body.backend is not None
        self._run(self._final_reply(body))

    def _stop_body_relay(self, body: _Body) -> None:
        if (
            body.backend is not None
            and body.backend.transport is not None
            and body.backend.is_open
        ):
            body.backend.raw_transport.unregisterProducer()
        self.resume_reading("backend")

    async def _final_reply(self, body: _Body) -> Reply:
        tx = body.transaction
        tx.done = True
        tx.record.size = body.scanner.size
        if body.scanner.fault is BodyFault.BARE_NEWLINE:
            reply = R_BARE_NEWLINE
        elif body.scanner.fault is BodyFault.TOO_BIG:
            reply = R_TOO_BIG
        elif body.backend is None:
            reply = R_BACKEND_LOST
        else:
            try:
                reply = await body.backend.expect_reply()
            except BackendError:
                self._drop_backend()
                reply = R_BACKEND_LOST
        if reply.ok:
            self.session.delivered += 1
        outcome = "delivered" if reply.ok else ("refused" if reply.code >= 500 else "failed")
        self._end_transaction(outcome, reply.summary())
        if not self._connected:
            self._drop_backend()
        return reply

    def _end_transaction(self, outcome: str, final: str, reset_backend: bool = True) -> None:
        """Close the current transaction's record and log it; reset it at the backend too."""
        tx, self._tx = self._tx, None
        if tx is None:
            return
        if reset_backend and tx.backend_mail is not None and not tx.done:
            backend = self._backend
            if backend is not None and backend.is_open:
                # Keeps the backend in step for the next transaction on this connection.
                backend.command(b"RSET").addErrback(lambda _: None)
        self.session.transactions += 1
        tx.record.outcome = outcome
        tx.record.final = final
        tx.record.emit(self.session, self._reactor.seconds())

    def _drop_backend(self) -> None:
        """Leave the current backend connection (politely if it is idle)."""
        backend, self._backend = self._backend, None
        self._backend_route = None
        if backend is not None:
            backend.close()


class SMTPFrontFactory(ServerFactory):
    """Builds an L{SMTPFront} per connection on one listener."""

    noisy = False

    def __init__(
        self,
        config: Config,
        listen: ListenConfig,
        router: Router,
        reactor: Any,
        *,
        server_tls: ServerTLS | None,
    ) -> None:
        self.settings = FrontSettings.from_config(config, listen, server_tls)
        self.router = router
        self.reactor = reactor

    @override
    def buildProtocol(self, addr: Any) -> SMTPFront:
        front = SMTPFront(self.settings, self.router, self.reactor)
        front.factory = self
        return front


def _bracket(path: bytes) -> bytes:
    """The path with angle brackets, as the backend must see it."""
    return path if path.startswith(b"<") else b"<" + path + b">"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _size_param(params: bytes) -> int | None:
    """The value of a MAIL SIZE= parameter, if any (RFC 1870)."""
    for param in params.split():
        key, _, value = param.partition(b"=")
        if key.upper() == b"SIZE" and value.isdigit():
            return int(value)
    return None


def _refusal(decision: Refuse) -> Reply:
    """The client's reply for a router's refusal: C{550 5.7.1 <message>} unless it names a code."""
    text = decision.message.encode("utf-8", "replace")
    code_text = decision.smtp_code.strip()
    code, _, enhanced = code_text.partition(" ")
    if not (len(code) == 3 and code.isdigit() and code[0] in "45"):
        code, enhanced = "550", "5.7.1"
    prefix = (enhanced.strip() + " ").encode("ascii", "replace") if enhanced.strip() else b""
    return Reply(int(code), (prefix + text,))
