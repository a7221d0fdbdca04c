"""The protocol-independent part of an IMAP or POP3 front: pre-auth reading, login, then splice.

A front (L{LoginFront}) reads the client's pre-auth commands itself, asks the router where the
session belongs and logs in at the backend (L{relaygate.login.flow}), answers the client, and
from then on hands the two connections to L{relaygate.splice.Splice}. The protocol modules
supply the parts that differ: command parsing, replies, and the backend login dialogue.

The session's phase (L{relaygate.login.phase}) changes in one method, L{LoginFront._enter}.
A refusal is shown to the client and, unless the router asked to wait (C{Auth-Wait}), ends the
session; a router or backend that fails gets the protocol's "internal server error" and a close.

TLS with the client (DESIGN rule 5) is the L{ClientTLSGate}'s: L{LoginFront.begin_tls} answers
STARTTLS/STLS, drops what the client pipelined after the command and starts the handshake; an
implicit-TLS listener greets only after its handshake; either way the client certificate is
then checked as nginx does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import ClientAddress, client_address
from relaygate.client_tls import AfterHandshake, ClientTLSGate
from relaygate.login.access import log_session
from relaygate.login.flow import (
    BackendRefused,
    LoggedIn,
    LoginFlow,
    LoginLeg,
    LoginOutcome,
    LoginResult,
    Relay,
    RouterRefused,
    Unavailable,
)
from relaygate.login.limits import auth_blocked, count_auth_failure
from relaygate.login.line_client import LineBackendClient
from relaygate.login.operations import LoginOperations
from relaygate.login.phase import Event, LoginPhase, PhaseMachine
from relaygate.login.settings import LoginSettings
from relaygate.policy import TOO_MANY_AUTH_FAILURES, refusal
from relaygate.proxy_protocol import proxy_addresses
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import AuthRequest, ClientTLS, Refuse, Router
from relaygate.sasl import Challenge, Credentials, Failed, SASLExchange, Step, make_salt
from relaygate.splice import Splice, SpliceEnd
from relaygate.text import one_line


@implementer(IHalfCloseableProtocol, IPushProducer, IHandshakeListener)
class LoginFront(LoginOperations, Protocol):
    """The protocol-independent part of an IMAP or POP3 front, before and after login.

    Subclasses parse and answer commands in L{step}, call L{start_login} with the client's
    credentials (L{start_sasl} for an AUTHENTICATE/AUTH exchange, L{begin_tls} for
    STARTTLS/STLS), and implement the replies and the backend dialogue. The front registers
    itself as its transport's producer while it answers commands, so a client that pipelines
    commands without reading the answers gets paused instead of filling memory.
    """

    protocol_name: ClassVar[str] = ""
    _log = Logger()

    def __init__(
        self,
        settings: LoginSettings,
        router: Router,
        reactor: IGatewayReactor,
        random: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self._router = router
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._random = random
        self.buffer = bytearray()
        self._phases = PhaseMachine()
        self.tls = ClientTLSGate(
            reactor,
            self.protocol_name,
            settings.tls_mode,
            settings.server_tls,
            self._handshake_expired,
        )
        self._flow = LoginFlow(
            self.protocol_name,
            settings,
            router,
            reactor,
            self.backend_login,
            lambda: self.state is LoginPhase.CLOSED,
        )
        self.salt = b""
        self._exchange: SASLExchange | None = None
        self._exchange_tag = b""
        self._errors = 0
        self._failures = 0
        self._attempt = 0
        self._paused_for: set[str] = set()
        self._reading_paused = False
        self._idle: IDelayedCall | None = None
        self._work: Deferred[None] | None = None
        self._splice: Splice | None = None
        self._started = 0.0
        self._outcome = ""
        self._client_eof = False
        self._high_water = settings.max_line_length * 2
        self.client = ClientAddress("", 0, "", 0)

    @property
    def state(self) -> LoginPhase:
        """The session's phase (changed only by L{_enter})."""
        return self._phases.phase

    def _enter(self, event: Event) -> LoginPhase:
        """The one place the phase changes; returns the phase left."""
        return self._phases.feed(event)

    @property
    def secure(self) -> bool:
        """True once a TLS handshake with the client completed (implicit or STARTTLS)."""
        return self.tls.secure

    @property
    def client_tls(self) -> ClientTLS | None:
        """The client leg's TLS facts for the router (C{Auth-SSL-*}), after the handshake."""
        return self.tls.info

    # Hooks for subclasses.

    def greeting(self) -> bytes:
        """The bytes sent when the client connects."""
        raise NotImplementedError

    def step(self) -> bool:
        """Handle one command or SASL line from L{buffer}; C{False} when more bytes are needed."""
        raise NotImplementedError

    def reply_refused(self, tag: bytes, text: bytes) -> None:
        """Tell the client its login (the command tagged C{tag}) was refused with C{text}."""
        raise NotImplementedError

    def reply_internal_error(self) -> None:
        """Tell the client the gateway could not serve it (nginx's exact text)."""
        raise NotImplementedError

    def reply_timeout(self) -> None:
        """Tell the client it was silent too long before logging in."""
        raise NotImplementedError

    def reply_sasl_failed(self, tag: bytes, failed: Failed) -> None:
        """Answer an AUTHENTICATE/AUTH exchange that ended without credentials."""
        raise NotImplementedError

    def generic_refusal(self) -> bytes:
        """The refusal text when the backend's own is not passed on."""
        return b"Authentication failed"

    async def backend_login(
        self, leg: LoginLeg, tag: bytes, user: bytes, password: bytes
    ) -> LoginOutcome:
        """Log in to the backend as C{user}; say whether it accepted."""
        raise NotImplementedError

    def reply_logged_in(self, tag: bytes, outcome: LoggedIn) -> None:
        """Answer the client's login command with the backend's acceptance."""
        assert self.transport is not None
        self.transport.write(outcome.reply)

    def reset_session(self) -> None:
        """Forget the pre-auth state at STARTTLS/STLS (a pending USER, a SASL exchange)."""

    def after_failed_login(self) -> None:
        """Reset protocol state (POP3's USER) so the client can start a new login."""

    # Twisted hooks.

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self._started = self._clock.seconds()
        self.client = client_address(self.transport.getPeer(), self.transport.getHost())
        IConsumer(self.transport).registerProducer(self, True)
        if self.tls.implicit:
            # The greeting waits for the handshake (handshakeCompleted): a client whose
            # certificate is refused gets nginx's reply instead of it.
            self._await_handshake()
            return
        self.transport.write(self.greeting())
        self._restart_idle()

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._splice is not None:
            self._splice.from_client(data)
            return
        if self.state is LoginPhase.CLOSED:
            return
        self.buffer += data
        if self.state is LoginPhase.READING:
            self._restart_idle()
        self.process()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self._splice is not None:
            self._splice.client_lost(reason)
            return
        previous = self._enter(Event.CLOSED)
        self._stop_idle()
        self.tls.stop()
        if self._work is not None:
            self._work.cancel()
        if self._flow.backend is not None:
            self._flow.backend.close()
        if previous is not LoginPhase.CLOSED:
            # Nobody decided to close: the client left before a login completed.
            self._outcome = "client closed before login"
        self._log_session(0, 0)

    def readConnectionLost(self) -> None:
        """The client half-closed: pass it on when relaying; before login, answer every
        command it sent (a login in progress included), then close."""
        if self._splice is not None:
            self._splice.client_eof()
            return
        self._client_eof = True
        if self.state in (LoginPhase.READING, LoginPhase.WORKING):
            self.process()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Nothing to do: the backend's half-close reached the client."""

    def pauseProducing(self) -> None:
        """The client is not reading our answers: stop reading its commands."""
        self._pause("output")

    def resumeProducing(self) -> None:
        """The client caught up with our answers."""
        self._unpause("output")
        self.process()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the cleanup."""

    # TLS with the client.

    def begin_tls(self, reply: bytes) -> bool:
        """Answer STARTTLS/STLS with C{reply} and start the handshake; C{False} if not offered.

        What the client pipelined after the command came in plaintext and must not be read as
        if it came over TLS (RFC 2595 section 3.1, CVE-2014-3556/-3557): it is discarded, and
        the pre-auth state is reset, before the TLS layer takes over the connection.
        """
        if not self.tls.offers_starttls():
            return False
        assert self.transport is not None
        discarded = len(self.buffer) or None
        self.buffer.clear()
        self._exchange = None
        self.reset_session()
        self.write(reply)
        self._enter(Event.TLS_STARTED)
        self._stop_idle()
        self.tls.start_tls(self.transport, discarded, self.client.ip)
        return True

    def _await_handshake(self) -> None:
        """Read nothing until the handshake is done, for at most C{[tls] handshake_timeout}."""
        self._enter(Event.TLS_STARTED)
        self._stop_idle()
        self.tls.await_handshake()

    def _handshake_expired(self) -> None:
        """The client did not finish its TLS handshake in time: no reply can reach it."""
        self._log.info(
            "{protocol} client {client}: TLS handshake timeout",
            protocol=self.protocol_name,
            client=self.client.ip,
        )
        self._outcome = "TLS handshake timeout"
        self._enter(Event.CLOSED)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        """TLS is up (implicit, or after STARTTLS): check the client certificate, then read."""
        if self.state is not LoginPhase.HANDSHAKE:
            self.tls.stop()
            return
        after = self.tls.completed(self.transport, self.client.ip)
        if after is AfterHandshake.IGNORED:
            return
        self._enter(Event.TLS_UP)
        if after is AfterHandshake.REFUSE:
            self._refuse_certificate()
            return
        if after is AfterHandshake.GREET:
            self.write(self.greeting())
        self._restart_idle()
        self.process()

    def _refuse_certificate(self) -> None:
        self.write(self.tls.refusal())
        self.close(f"client certificate: {self.tls.result.problem}")

    def has_verified_certificate(self) -> bool:
        """Whether the client showed a certificate that verified (for SASL EXTERNAL)."""
        return self.tls.has_verified_certificate()

    # Reading commands.

    def process(self) -> None:
        """Handle buffered input while the front is reading and the client reads our answers."""
        if self.tls.pending is not None:
            if self.state is LoginPhase.READING and b"\n" in self.buffer:
                self._refuse_certificate()
        else:
            while (
                self.state is LoginPhase.READING
                and "output" not in self._paused_for
                and self.buffer
                and self.step()
            ):
                pass
        if self.state is LoginPhase.WORKING and len(self.buffer) > self._high_water:
            self._pause("busy")
        if (
            self._client_eof
            and self.state is LoginPhase.READING
            and "output" not in self._paused_for
        ):
            # Every complete command the client sent before its half-close is answered; what
            # is left is a partial line that can never complete.
            self.close("client closed before login")

    def _pause(self, reason: str) -> None:
        self._paused_for.add(reason)
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            IPushProducer(self.transport).pauseProducing()

    def _unpause(self, reason: str) -> None:
        self._paused_for.discard(reason)
        if not self._paused_for and self._reading_paused and self.transport is not None:
            self._reading_paused = False
            IPushProducer(self.transport).resumeProducing()

    def write(self, data: bytes) -> None:
        """Send C{data} to the client."""
        if self.transport is not None and self.state is not LoginPhase.CLOSED:
            self.transport.write(data)

    def close(self, outcome: str) -> None:
        """Stop reading and close after our last answer is sent."""
        if self.state is LoginPhase.CLOSED:
            return
        self._outcome = outcome
        previous = self._enter(Event.CLOSED)
        self._stop_idle()
        self.tls.stop()
        if self.transport is None:
            return
        if previous is not LoginPhase.SPLICED:
            # A TLS transport sends its close_notify only once no producer is registered
            # (twisted.protocols.tls), and must read the peer's: stop being its producer.
            IConsumer(self.transport).unregisterProducer()
            if self._reading_paused:
                self._reading_paused = False
                IPushProducer(self.transport).resumeProducing()
        self.transport.loseConnection()

    def invalid(self, reply: bytes, fatal: bool = False) -> None:
        """Answer a bad command; too many of them (or a fatal one) close the session."""
        self.write(reply)
        self._errors += 1
        if fatal or self._errors >= self.settings.max_errors:
            self._log.info(
                "{protocol} client {client} closed after bad commands",
                protocol=self.protocol_name,
                client=self.client.ip,
            )
            self.close("too many errors" if not fatal else "protocol error")

    def _restart_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.settings.timeout)
        else:
            self._idle = self._clock.callLater(self.settings.timeout, self._idle_expired)

    def _stop_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_expired(self) -> None:
        self._idle = None
        if self.state is LoginPhase.READING:
            self.reply_timeout()
            self.close("timeout")

    # SASL (AUTHENTICATE, AUTH).

    def start_sasl(self, tag: bytes, mechanism: str, initial: bytes | None) -> None:
        """Begin a SASL exchange for C{mechanism} with the command's initial response."""
        salt = b""
        if mechanism == "cram-md5":
            if not self.salt:
                self.salt = make_salt(self.settings.server_name, self._clock, self._random)
            salt = self.salt
        # nginx asks for EXTERNAL's identity with its "Username:" prompt.
        self._exchange = SASLExchange(mechanism, salt, external_prompt=b"Username:")
        self._exchange_tag = tag
        self._sasl_step(self._exchange.first(initial))

    @property
    def in_sasl(self) -> bool:
        """Whether the next line is a SASL response (not a command)."""
        return self._exchange is not None

    def sasl_line(self, line: bytes) -> None:
        """The client's response line in a SASL exchange."""
        assert self._exchange is not None
        self._sasl_step(self._exchange.respond(line))

    def abandon_sasl(self) -> bytes:
        """Drop the exchange in progress (a line too long); returns its command's tag."""
        self._exchange = None
        return self._exchange_tag

    def _sasl_step(self, step: Step) -> None:
        if isinstance(step, Challenge):
            self.write(b"+ " + step.encoded() + b"\r\n")
            return
        self._exchange = None
        if isinstance(step, Failed):
            self.reply_sasl_failed(self._exchange_tag, step)
            return
        self.start_login(self._exchange_tag, step)

    # Logging in.

    def start_login(self, tag: bytes, credentials: Credentials) -> None:
        """Ask the router about C{credentials}, log in to the backend, then relay."""
        self._enter(Event.LOGIN_STARTED)
        self._stop_idle()
        self._work = Deferred.fromCoroutine(self._login(tag, credentials))

    async def _login(self, tag: bytes, credentials: Credentials) -> None:
        try:
            if await auth_blocked(self.transport, self.client.ip):
                # Other sessions from this address reached [limits] auth_failures_per_hour.
                self.write(
                    refusal(self.protocol_name, self.settings.server_name, TOO_MANY_AUTH_FAILURES)
                )
                self.close("too many failed logins")
                return
            self._attempt += 1
            request = AuthRequest(
                protocol=self.protocol_name,
                client_ip=self.client.ip,
                client_port=self.client.port,
                method=credentials.method,
                user=credentials.user,
                password=credentials.password,
                salt=credentials.salt,
                attempt=self._attempt,
                tls=self.client_tls,
                proxy=proxy_addresses(self.transport),
            )
            result = await self._flow.attempt(request, tag, self.client)
            await self._answer(result, tag)
        except CancelledError:
            pass
        except Exception:
            self._log.failure("{protocol} login failed unexpectedly", protocol=self.protocol_name)
            self._internal_error()
        finally:
            self._work = None

    async def _answer(self, result: LoginResult, tag: bytes) -> None:
        if isinstance(result, Unavailable):
            self._internal_error()
        elif isinstance(result, RouterRefused):
            await self._router_refused(result.decision, tag)
        elif isinstance(result, BackendRefused):
            blocked = await count_auth_failure(self.transport, self.client.ip)
            text = result.text if self.settings.pass_error_message else self.generic_refusal()
            self.reply_refused(tag, text)
            self._login_failed(blocked)
        else:
            assert isinstance(result, Relay)
            self.reply_logged_in(tag, result.outcome)
            self._start_splice(result.backend)

    async def _router_refused(self, decision: Refuse, tag: bytes) -> None:
        blocked = await count_auth_failure(self.transport, self.client.ip)
        if not decision.wait:
            self.reply_refused(tag, one_line(decision.message))
            self.close("auth failed")
            return
        await _sleep(self._clock, decision.wait)
        self.reply_refused(tag, one_line(decision.message))
        self._login_failed(blocked)

    def _login_failed(self, blocked: bool) -> None:
        self._failures += 1
        if blocked:
            self.close("too many failed logins")
            return
        if self._failures >= self.settings.max_login_failures:
            self.close("auth failed")
            return
        self.after_failed_login()
        self._enter(Event.LOGIN_FAILED)
        self._unpause("busy")
        self._restart_idle()
        self.process()

    def _internal_error(self) -> None:
        if self.state is LoginPhase.CLOSED:
            return
        self.reply_internal_error()
        self.close("internal error")

    def _start_splice(self, backend: LineBackendClient) -> None:
        assert self.transport is not None and backend.transport is not None
        self._enter(Event.LOGGED_IN)
        self._stop_idle()
        IConsumer(self.transport).unregisterProducer()
        self._paused_for.clear()
        if self._reading_paused:
            self._reading_paused = False
            IPushProducer(self.transport).resumeProducing()
        self._splice = Splice(
            self.transport,
            backend.transport,
            self._clock,
            self.settings.proxy_timeout,
            self._ended,
        )
        backend.attach(self._splice)
        leftover = bytes(self.buffer)
        self.buffer.clear()
        if leftover:
            self._splice.from_client(leftover)
        if self._client_eof:
            self._splice.client_eof()

    def _ended(self, end: SpliceEnd) -> None:
        self._outcome = end.how
        self._log_session(end.from_client, end.from_backend)

    def _log_session(self, from_client: int, from_backend: int) -> None:
        log_session(
            self.protocol_name,
            self.client,
            self.tls.summary(),
            self._flow,
            attempts=self._attempt,
            outcome=self._outcome,
            from_client=from_client,
            from_backend=from_backend,
            now=self._clock.seconds(),
            started=self._started,
        )


def _sleep(clock: IReactorTime, seconds: float) -> Deferred[None]:
    """A cancellable pause on the injected clock (for C{Auth-Wait})."""
    d: Deferred[None] = Deferred(lambda _: call.cancel())
    call = clock.callLater(seconds, d.callback, None)
    return d
