"""The login phase shared by the IMAP and POP3 fronts: routing, backend connection, then splice.

A front (L{LoginFront}) reads the client's pre-auth commands itself, asks the router where the
session belongs, connects to the chosen backend (trying C{Accept.backends} in order), logs in
there with the credentials the router may have rewritten, answers the client, and from then on
hands the two connections to L{relaygate.splice.Splice}. The protocol modules supply the parts
that differ: command parsing, replies, and the backend login dialogue.

The router replies follow nginx's mail module (C{src/mail/ngx_mail_auth_http_module.c}): a
refusal is shown to the client and, unless the router asked to wait (``Auth-Wait``), ends the
session; a router or backend that fails gets the protocol's "internal server error" and a close.

TLS (DESIGN rule 5): L{LoginFront.begin_tls} answers the client's STARTTLS/STLS, drops what it
pipelined after the command and starts the handshake; an implicit-TLS listener greets only
after its handshake; either way the client certificate is then checked as nginx does. To the
backend, C{backend_tls} picks plaintext, STARTTLS/STLS (L{LoginFront.secure_backend}) or TLS
from the first byte, always verified against the backend's host.
"""

from __future__ import annotations

import base64
import binascii
import enum
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import ClientAddress, HostPort, client_address
from relaygate.config.login import IMAPConfig, POP3Config
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.connect import client_endpoint
from relaygate.policy import limits_for
from relaygate.proxy_protocol import encode_header, proxy_addresses
from relaygate.routing.router import Accept, AuthRequest, ClientTLS, Refuse, Router
from relaygate.splice import Splice, SpliceEnd
from relaygate.tls.client import backend_tls_creator
from relaygate.tls.facts import CERTIFICATE_REPLIES, CertificateProblem, tls_facts
from relaygate.tls.handshake import HandshakeResult, HandshakeTimer
from relaygate.tls.server import ServerTLS

# A module-level logger: as a class attribute, Logger would replace the namespace with the
# class's name, and operators filter the access log by this namespace.
_access_log = Logger(namespace="relaygate.access")


class BackendError(Exception):
    """The backend broke the protocol, went away or was too slow during login."""


class BackendTLSError(BackendError):
    """TLS to the backend is not offered where required, or its handshake or check failed."""


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login; C{reply} is what the client gets as the answer."""

    reply: bytes


@dataclass(frozen=True)
class Refused:
    """The backend refused the credentials; C{text} is its reason (without status word)."""

    text: bytes


LoginOutcome = LoggedIn | Refused


@dataclass(frozen=True)
class Credentials:
    """A login as the client gave it (C{method} as nginx's ``Auth-Method`` names it)."""

    tag: bytes
    method: str
    user: bytes
    password: bytes
    salt: bytes = b""


def make_salt(name: str, clock: IReactorTime, random: Callable[[], int] | None = None) -> bytes:
    """An APOP/CRAM-MD5 challenge in nginx's format, C{<random.time@name>}."""
    number = random() if random is not None else secrets.randbits(63)
    return b"<%d.%d@%s>" % (number, int(clock.seconds()), name.encode("ascii", "replace"))


def decode_base64(text: bytes) -> bytes | None:
    """Strict base64 (a SASL response); C{None} when it is not valid."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def split_plain(decoded: bytes) -> tuple[bytes, bytes] | None:
    """The (authcid, password) of a SASL PLAIN message C{authzid NUL authcid NUL password}."""
    parts = decoded.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        return None
    return parts[1], parts[2]


def encode_plain(user: bytes, password: bytes) -> bytes:
    """A SASL PLAIN initial response for C{user}, base64-encoded."""
    return base64.b64encode(b"\0" + user + b"\0" + password)


def printable(value: bytes) -> str:
    """Client-supplied bytes as text for log fields (never for the format string)."""
    return value.decode("utf-8", "backslashreplace")


def one_line(text: str) -> bytes:
    """Router or backend text made safe to put in a single reply line."""
    cleaned = "".join(" " if c in "\r\n\0" else c for c in text)
    return cleaned.encode("utf-8", "replace")


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class BackendClient(Protocol):
    """The gateway's connection to a backend during login: read a line, read bytes, send.

    Each read returns a L{Deferred} that times out on the injected clock. Once the login is
    done, L{attach} hands the connection to a splice, and everything the backend sends goes
    straight to the client. L{start_tls} switches the connection to TLS (after STARTTLS/STLS).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float, max_line: int = 65536) -> None:
        self._clock = clock
        self._timeout = timeout
        self._max_line = max_line
        self._buffer = bytearray()
        self._want: int | None = None
        self._waiting: Deferred[bytes] | None = None
        self._lost: Failure | None = None
        self._splice: Splice | None = None
        self._handshake: Deferred[None] | None = None
        self.tls = ""
        """The TLS facts of this leg for the access log (C{TLSv1.3 CIPHER verified}), or C{""}."""

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._splice is not None:
            self._splice.from_backend(data)
            return
        self._buffer += data
        self._deliver()
        if self._waiting is None and len(self._buffer) > self._max_line:
            self._fail(BackendError("backend sent too much before its reply was read"))

    def _deliver(self) -> None:
        if self._waiting is None:
            return
        if self._want is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._max_line:
                    self._fail(BackendError("backend sent a line that is too long"))
                return
            result = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[: end + 1]
        else:
            if len(self._buffer) < self._want:
                return
            result = bytes(self._buffer[: self._want])
            del self._buffer[: self._want]
        waiting, self._waiting = self._waiting, None
        waiting.callback(result)

    def _fail(self, error: Exception) -> None:
        self._lost = Failure(error)
        if self.transport is not None:
            self.transport.loseConnection()
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(self._lost)

    def _read(self, want: int | None) -> Deferred[bytes]:
        if self._waiting is not None:
            raise RuntimeError("one read at a time")
        if self._lost is not None:
            return defer.fail(self._lost)

        def cancel(d: Deferred[bytes]) -> None:
            if self._waiting is d:
                self._waiting = None

        d: Deferred[bytes] = Deferred(cancel)
        self._waiting = d
        self._want = want
        self._deliver()
        d.addTimeout(self._timeout, self._clock)
        return d

    def read_line(self) -> Deferred[bytes]:
        """The next line the backend sends, without its CRLF."""
        return self._read(None)

    def read_bytes(self, count: int) -> Deferred[bytes]:
        """The next C{count} bytes (an IMAP literal in a response)."""
        return self._read(count)

    def send(self, data: bytes) -> None:
        """Send C{data} to the backend as is."""
        assert self.transport is not None
        self.transport.write(data)

    def start_tls(self, creator: IOpenSSLClientConnectionCreator) -> Deferred[None]:
        """Begin TLS now, right after the backend's OK to STARTTLS/STLS; fires once it is up.

        Call it as soon as that OK has been read, before anything else of the read is looked
        at: whatever the backend sent after the OK came in plaintext and is discarded (RFC 2595
        section 3.1, DESIGN rule 5). The result fails with L{BackendTLSError} when the handshake
        or the certificate check fails, and times out like a read.
        """
        assert self.transport is not None
        if self._buffer:
            self._log.warn(
                "backend sent {count} bytes after its answer to STARTTLS: discarded",
                count=len(self._buffer),
            )
            self._buffer.clear()
        if self._lost is not None:
            return defer.fail(BackendTLSError(f"backend gone: {self._lost.getErrorMessage()}"))

        def cancel(d: Deferred[None]) -> None:
            if self._handshake is d:
                self._handshake = None

        handshake: Deferred[None] = Deferred(cancel)
        self._handshake = handshake
        handshake.addTimeout(self._timeout, self._clock)
        self.transport.startTLS(creator)  # type: ignore[attr-defined]
        return handshake

    def handshakeCompleted(self) -> None:
        """TLS is up (after L{start_tls}, or on an implicit-TLS connection): note its facts."""
        facts = tls_facts(self.transport)
        if facts is not None:
            verified = "verified" if facts.verified else "unverified"
            self.tls = f"{facts.protocol} {facts.cipher} {verified}"
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            handshake.callback(None)

    def close(self) -> None:
        """Drop the connection (after a refused login, or when the client left)."""
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()

    def attach(self, splice: Splice) -> None:
        """From now on, relay everything to C{splice}, starting with what is buffered."""
        self._splice = splice
        leftover = bytes(self._buffer)
        self._buffer.clear()
        if leftover:
            splice.from_backend(leftover)
        if self._lost is not None:
            splice.backend_lost(self._lost)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self._splice is not None:
            self._splice.backend_lost(reason)
            return
        if reason.check(SSL.Error):
            # How the TLS layer reports a failed handshake or certificate check.
            reason = Failure(BackendTLSError(f"TLS with the backend failed: {reason.value}"))
        if self._lost is None:
            self._lost = reason
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(reason)
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            error = reason.value
            if not isinstance(error, BackendTLSError):
                error = BackendTLSError(f"backend closed during the TLS handshake: {error}")
            handshake.errback(error)

    def readConnectionLost(self) -> None:
        """The backend half-closed: pass it on after login, otherwise it is the end."""
        if self._splice is not None:
            self._splice.backend_eof()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Nothing to do: the client's half-close reached the backend."""


class _QuietFactory(ClientFactory):
    """Builds one backend protocol without logging a start/stop line per connection."""

    noisy = False

    def __init__(self, make: Callable[[], BackendClient]) -> None:
        self._make = make

    @override
    def buildProtocol(self, addr: Any) -> BackendClient:
        return self._make()


TLSCreatorFor = Callable[[HostPort], IOpenSSLClientConnectionCreator]
"""Makes the verifying TLS creator for one backend (its host is the name checked)."""


async def connect_backend(
    reactor: Any,
    backends: tuple[HostPort, ...],
    timeout: float,
    make: Callable[[], BackendClient],
    implicit_tls: TLSCreatorFor | None = None,
    preamble: bytes = b"",
) -> tuple[BackendClient, HostPort]:
    """Connect to the first of C{backends} that answers; fail with the last error.

    @param implicit_tls: for C{backend_tls = "implicit"}: the TLS creator for each backend.
    @param preamble: bytes sent first on each connection (a PROXY header).
    """
    log = Logger(namespace="relaygate.login")
    error: BaseException = BackendError("no backend to connect to")
    for backend in backends:
        try:
            creator = implicit_tls(backend) if implicit_tls is not None else None
            endpoint = client_endpoint(reactor, backend, timeout, creator, preamble)
            connected = await endpoint.connect(_QuietFactory(make))
        except CancelledError:
            raise
        except Exception as e:
            log.info("backend {backend} unreachable: {error}", backend=str(backend), error=e)
            error = e
            continue
        assert isinstance(connected, BackendClient)
        return connected, backend
    raise error


class FrontState(enum.Enum):
    """Where a front is: in a TLS handshake, reading commands, waiting for the router/backend,
    relaying, done."""

    HANDSHAKE = "handshake"
    READING = "reading"
    WORKING = "working"
    SPLICED = "spliced"
    CLOSED = "closed"


@dataclass(frozen=True)
class FrontSettings:
    """What a front needs from the configuration, common to IMAP and POP3."""

    server_name: str
    auth: tuple[str, ...]
    timeout: float
    proxy_timeout: float
    auth_timeout: float
    connect_timeout: float
    max_line_length: int
    max_errors: int
    max_login_failures: int
    pass_error_message: bool
    xclient: bool
    backend_login: str
    tls_mode: str = "none"
    server_tls: ServerTLS | None = field(default=None, compare=False)
    """The listener's TLS (implicit, or for STARTTLS/STLS); C{None} for C{tls = "none"}."""
    backend_tls: str = "none"
    backend_ca: str = ""
    backend_certificate: str = ""
    backend_key: str = ""
    backend_proxy_protocol: str = "none"

    @classmethod
    def from_section(
        cls,
        config: Config,
        listen: ListenConfig,
        section: IMAPConfig | POP3Config,
        server_tls: ServerTLS | None,
    ) -> FrontSettings:
        """The settings for C{listen} from its protocol's section (C{[imap]} or C{[pop3]})."""
        return cls(
            server_name=config.server.name,
            auth=section.auth,
            timeout=section.timeout,
            proxy_timeout=section.proxy_timeout,
            auth_timeout=config.auth.timeout,
            connect_timeout=config.server.connect_timeout,
            max_line_length=section.max_line_length,
            max_errors=section.max_errors,
            max_login_failures=section.max_login_failures,
            pass_error_message=section.pass_error_message,
            xclient=section.xclient,
            backend_login=section.backend_login,
            tls_mode=listen.tls,
            server_tls=server_tls,
            backend_tls=section.backend_tls,
            backend_ca=section.backend_ca,
            backend_certificate=section.backend_certificate,
            backend_key=section.backend_key,
            backend_proxy_protocol=section.backend_proxy_protocol,
        )

    def backend_tls_for(self, backend: HostPort) -> IOpenSSLClientConnectionCreator:
        """The verifying TLS creator for C{backend}: its host is the name (or IP) checked."""
        return backend_tls_creator(
            backend.host, self.backend_ca, self.backend_certificate, self.backend_key
        )


class LoginFrontFactory(Factory):
    """What the IMAP and POP3 front factories share: one listener's settings and router."""

    noisy = False

    def __init__(
        self,
        config: Config,
        listen: ListenConfig,
        section: IMAPConfig | POP3Config,
        router: Router,
        reactor: Any,
        random: Callable[[], int] | None = None,
        *,
        server_tls: ServerTLS | None,
    ) -> None:
        self.settings = FrontSettings.from_section(config, listen, section, server_tls)
        self.router = router
        self.reactor = reactor
        self.random = random
        self.capabilities = [c.encode("ascii") for c in section.capabilities]


@implementer(IHalfCloseableProtocol, IPushProducer, IHandshakeListener)
class LoginFront(Protocol):
    """The protocol-independent part of an IMAP or POP3 front, before and after login.

    Subclasses parse and answer commands in L{step}, call L{start_login} with the client's
    credentials (and L{begin_tls} for STARTTLS/STLS), and implement the replies and the
    backend dialogue. The front registers itself as its transport's producer while it answers
    commands, so a client that pipelines commands without reading the answers gets paused
    instead of filling memory.
    """

    protocol_name: ClassVar[str] = ""
    _log = Logger()

    def __init__(
        self,
        settings: FrontSettings,
        router: Router,
        reactor: Any,
        random: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self._router = router
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._random = random
        self.buffer = bytearray()
        self.state = FrontState.READING
        self.secure = False
        """True once a TLS handshake with the client completed (implicit or STARTTLS)."""
        self.client_tls: ClientTLS | None = None
        """The client leg's TLS facts for the router (``Auth-SSL-*``), after the handshake."""
        self._certificate_problem: CertificateProblem | None = None
        self._handshake: HandshakeTimer | None = None
        self.backend_tls_mode = "none"
        """This login's C{backend_tls}: the route's own, else the protocol section's."""
        self._backend_address_used: HostPort | None = None
        self._backend_tls = ""
        self.salt = b""
        self._errors = 0
        self._failures = 0
        self._attempt = 0
        self._paused_for: set[str] = set()
        self._reading_paused = False
        self._idle: IDelayedCall | None = None
        self._work: Deferred[None] | None = None
        self._backend: BackendClient | None = None
        self._splice: Splice | None = None
        self._started = 0.0
        self._user = b""
        self._backend_address = ""
        self._outcome = ""
        self._high_water = settings.max_line_length * 2
        self.client = ClientAddress("", 0, "", 0)

    # Hooks for subclasses.

    def greeting(self) -> bytes:
        """The bytes sent when the client connects."""
        raise NotImplementedError

    def step(self) -> bool:
        """Handle one command or SASL line from L{buffer}; C{False} when more bytes are needed."""
        raise NotImplementedError

    def reply_refused(self, credentials: Credentials, text: bytes) -> None:
        """Tell the client its login was refused with C{text}."""
        raise NotImplementedError

    def reply_internal_error(self) -> None:
        """Tell the client the gateway could not serve it (nginx's exact text)."""
        raise NotImplementedError

    def reply_timeout(self) -> None:
        """Tell the client it was silent too long before logging in."""
        raise NotImplementedError

    def generic_refusal(self) -> bytes:
        """The refusal text when the backend's own is not passed on."""
        return b"Authentication failed"

    async def backend_login(
        self, backend: BackendClient, credentials: Credentials, user: bytes, password: bytes
    ) -> LoginOutcome:
        """Log in to the backend as C{user}; say whether it accepted."""
        raise NotImplementedError

    def reply_logged_in(self, credentials: Credentials, outcome: LoggedIn) -> None:
        """Answer the client's login command with the backend's acceptance."""
        assert self.transport is not None
        self.transport.write(outcome.reply)

    def reset_session(self) -> None:
        """Forget the pre-auth state at STARTTLS/STLS (a pending USER, a SASL exchange)."""

    # Twisted hooks.

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self._started = self._clock.seconds()
        self.client = client_address(self.transport.getPeer(), self.transport.getHost())
        IConsumer(self.transport).registerProducer(self, True)
        if self.settings.tls_mode == "implicit":
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
        if self.state is FrontState.CLOSED:
            return
        self.buffer += data
        if self.state is FrontState.READING:
            self._restart_idle()
        self.process()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self._splice is not None:
            self._splice.client_lost(reason)
            return
        previous, self.state = self.state, FrontState.CLOSED
        self._stop_idle()
        self._stop_handshake_timer()
        if self._work is not None:
            self._work.cancel()
        if self._backend is not None:
            self._backend.close()
        if previous is not FrontState.CLOSED:
            # Nobody decided to close: the client left before a login completed.
            self._outcome = "client closed before login"
        self._log_session(0, 0)

    def readConnectionLost(self) -> None:
        """The client half-closed: pass it on when relaying; before login it ends the session."""
        if self._splice is not None:
            self._splice.client_eof()
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
        server_tls = self.settings.server_tls
        if (
            server_tls is None
            or self.settings.tls_mode not in ("starttls", "starttls-required")
            or self.secure
        ):
            return False
        assert self.transport is not None
        if self.buffer:
            self._log.info(
                "{protocol} client {client} pipelined {count} bytes after STARTTLS: discarded",
                protocol=self.protocol_name,
                client=self.client.ip,
                count=len(self.buffer),
            )
            self.buffer.clear()
        self.reset_session()
        self.write(reply)
        self._await_handshake()
        self.transport.startTLS(server_tls)  # type: ignore[attr-defined]
        return True

    def _await_handshake(self) -> None:
        """Read nothing until the handshake is done, for at most C{[tls] handshake_timeout}."""
        if self._handshake is None:
            assert self.settings.server_tls is not None
            self._handshake = HandshakeTimer(
                self._clock, self.settings.server_tls.handshake_timeout, self._handshake_expired
            )
        self.state = FrontState.HANDSHAKE
        self._stop_idle()
        self._handshake.start()

    def _stop_handshake_timer(self) -> None:
        if self._handshake is not None:
            self._handshake.stop()

    def _handshake_expired(self) -> None:
        """The client did not finish its TLS handshake in time: no reply can reach it."""
        self._log.info(
            "{protocol} client {client}: TLS handshake timeout",
            protocol=self.protocol_name,
            client=self.client.ip,
        )
        self._outcome = "TLS handshake timeout"
        self.state = FrontState.CLOSED
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        """TLS is up (implicit, or after STARTTLS): check the client certificate, then read.

        As nginx's C{ngx_mail_verify_cert}: a certificate that failed verification, or none
        where one is required, gets C{CERTIFICATE_REPLIES} and a close; on an implicit-TLS
        listener instead of the greeting, after STARTTLS as the answer to the next command
        (as the SMTP front does, so the close cannot reset a command the client is writing).
        """
        if self._handshake is None or self.state is not FrontState.HANDSHAKE:
            self._stop_handshake_timer()
            return
        result = self._handshake.finished(self.transport)
        self.secure = True
        self.client_tls = result.info
        self.state = FrontState.READING
        problem = result.problem
        if problem is not None:
            self._log.info(
                "{protocol} refusing {client}: client certificate {problem} ({verify})",
                protocol=self.protocol_name,
                client=self.client.ip,
                problem=problem,
                verify=self.client_tls.verify if self.client_tls is not None else "",
            )
            if self.settings.tls_mode == "implicit":
                self._refuse_certificate(problem)
                return
            self._certificate_problem = problem
        elif self.settings.tls_mode == "implicit":
            self.write(self.greeting())
        self._restart_idle()
        self.process()

    def _refuse_certificate(self, problem: CertificateProblem) -> None:
        self.write(CERTIFICATE_REPLIES[self.protocol_name][problem])
        self.close(f"client certificate: {problem}")

    def has_verified_certificate(self) -> bool:
        """Whether the client showed a certificate that verified (for SASL EXTERNAL)."""
        return self.client_tls is not None and self.client_tls.verify == "SUCCESS"

    # Reading commands.

    def process(self) -> None:
        """Handle buffered input while the front is reading and the client reads our answers."""
        if self._certificate_problem is not None:
            if self.state is FrontState.READING and b"\n" in self.buffer:
                self._refuse_certificate(self._certificate_problem)
            return
        while (
            self.state is FrontState.READING
            and "output" not in self._paused_for
            and self.buffer
            and self.step()
        ):
            pass
        if self.state is FrontState.WORKING and len(self.buffer) > self._high_water:
            self._pause("busy")

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
        if self.transport is not None and self.state is not FrontState.CLOSED:
            self.transport.write(data)

    def close(self, outcome: str) -> None:
        """Stop reading and close after our last answer is sent."""
        if self.state is FrontState.CLOSED:
            return
        self._outcome = outcome
        previous, self.state = self.state, FrontState.CLOSED
        self._stop_idle()
        self._stop_handshake_timer()
        if self.transport is None:
            return
        if previous is not FrontState.SPLICED:
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
        if self.state is FrontState.READING:
            self.reply_timeout()
            self.close("timeout")

    # Logging in.

    def start_login(self, credentials: Credentials) -> None:
        """Ask the router about C{credentials}, log in to the backend, then relay."""
        self.state = FrontState.WORKING
        self._stop_idle()
        self._attempt += 1
        self._user = credentials.user
        self._work = Deferred.fromCoroutine(self._login(credentials))

    async def _login(self, credentials: Credentials) -> None:
        try:
            await self._route_and_login(credentials)
        except CancelledError:
            pass
        except Exception:
            self._log.failure("{protocol} login failed unexpectedly", protocol=self.protocol_name)
            self._internal_error()
        finally:
            self._work = None

    async def _route_and_login(self, credentials: Credentials) -> None:
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
        try:
            lookup = self._router.lookup(request)
            lookup.addTimeout(self.settings.auth_timeout, self._clock)
            decision = await lookup
        except CancelledError:
            if self.state is FrontState.CLOSED:
                raise
            self._log.warn("{protocol} router lookup timed out", protocol=self.protocol_name)
            self._internal_error()
            return
        except Exception as e:
            self._log.warn(
                "{protocol} router unavailable: {error}", protocol=self.protocol_name, error=e
            )
            self._internal_error()
            return
        if isinstance(decision, Refuse):
            await self._refused(credentials, decision)
            return
        await self._accepted(credentials, decision)

    async def _refused(self, credentials: Credentials, decision: Refuse) -> None:
        self._count_auth_failure()
        self._log.info(
            "{protocol} login refused by the router for {user!r}: {message!r}",
            protocol=self.protocol_name,
            user=printable(credentials.user),
            message=decision.message,
        )
        if not decision.wait:
            self.reply_refused(credentials, one_line(decision.message))
            self.close("auth failed")
            return
        await _sleep(self._clock, decision.wait)
        self.reply_refused(credentials, one_line(decision.message))
        self._login_failed()

    async def _accepted(self, credentials: Credentials, decision: Accept) -> None:
        user = decision.user if decision.user is not None else credentials.user
        password = decision.password
        if password is None and credentials.method in ("plain", "login"):
            password = credentials.password
        if (
            password is None
            or not decision.backends
            or (not user and credentials.method == "external")
        ):
            # After EXTERNAL the user comes from the router (Auth-User) when the client
            # named none.
            self._log.error(
                "{protocol} router accepted {user!r} without a user, password or backend",
                protocol=self.protocol_name,
                user=printable(credentials.user),
            )
            self._internal_error()
            return
        self._user = user
        mode = decision.backend_tls or self.settings.backend_tls
        self.backend_tls_mode = mode
        try:
            backend, address = await connect_backend(
                self._reactor,
                decision.backends,
                self.settings.connect_timeout,
                lambda: BackendClient(self._clock, self.settings.timeout),
                self.settings.backend_tls_for if mode == "implicit" else None,
                self._proxy_preamble(decision),
            )
        except CancelledError:
            raise
        except Exception as e:
            self._log.warn(
                "{protocol} no backend reachable: {error}", protocol=self.protocol_name, error=e
            )
            self._internal_error()
            return
        self._backend = backend
        self._backend_address = str(address)
        self._backend_address_used = address
        try:
            outcome = await self.backend_login(backend, credentials, user, password)
        except CancelledError:
            raise
        except Exception as e:
            self._log.warn(
                "{protocol} backend {backend} login failed: {error}",
                protocol=self.protocol_name,
                backend=self._backend_address,
                error=e,
            )
            self._backend_tls = backend.tls
            backend.close()
            self._backend = None
            self._internal_error()
            return
        self._backend_tls = backend.tls
        if isinstance(outcome, Refused):
            self._count_auth_failure()
            backend.close()
            self._backend = None
            self._log.info(
                "{protocol} backend {backend} refused {user!r}: {text!r}",
                protocol=self.protocol_name,
                backend=self._backend_address,
                user=printable(user),
                text=printable(outcome.text),
            )
            text = outcome.text if self.settings.pass_error_message else self.generic_refusal()
            self.reply_refused(credentials, text)
            self._login_failed()
            return
        self.reply_logged_in(credentials, outcome)
        self._start_splice(backend)

    async def secure_backend(
        self, backend: BackendClient, offered: bool, ask: Callable[[], Awaitable[bool]]
    ) -> bool:
        """STARTTLS/STLS to the backend as C{backend_tls} says; C{True} once TLS is up.

        @param offered: whether the backend advertised STARTTLS/STLS.
        @param ask: sends the command and says whether the backend answered OK; nothing else
            may be read between that answer and L{BackendClient.start_tls}.
        @raise BackendTLSError: C{required} and not offered or refused; or, in either mode,
            the handshake or the certificate check failed (a retry in plaintext is what an
            attacker who breaks handshakes would want). Nothing with credentials has been
            sent by then.
        """
        mode = self.backend_tls_mode
        if mode not in ("opportunistic", "required"):
            return False
        if not offered:
            if mode == "required":
                raise BackendTLSError(f"{self._backend_address} does not offer STARTTLS")
            return False
        if not await ask():
            if mode == "required":
                raise BackendTLSError(f"{self._backend_address} refused STARTTLS")
            return False
        assert self._backend_address_used is not None
        await backend.start_tls(self.settings.backend_tls_for(self._backend_address_used))
        return True

    def _count_auth_failure(self) -> None:
        """Count a refused login against the client's address (C{[limits]})."""
        limits = limits_for(self.transport)
        if limits is not None:
            Deferred.fromCoroutine(limits.auth_failed(self.client.ip))

    def _proxy_preamble(self, decision: Accept) -> bytes:
        """The PROXY header for the backend (C{backend_proxy_protocol}), or b""."""
        version = decision.backend_proxy_protocol or self.settings.backend_proxy_protocol
        if version not in ("v1", "v2"):
            return b""
        client = self.client
        return encode_header(
            version, (client.ip, client.port), (client.local_ip, client.local_port)
        )

    def _login_failed(self) -> None:
        self._failures += 1
        if self._failures >= self.settings.max_login_failures:
            self.close("auth failed")
            return
        self.after_failed_login()
        self.state = FrontState.READING
        self._unpause("busy")
        self._restart_idle()
        self.process()

    def ops_facts(self) -> dict[str, str]:
        """What the sessions view shows of this session beyond its bytes (docs/operations.md)."""
        states = {FrontState.SPLICED: "spliced", FrontState.WORKING: "login"}
        return {
            "user": printable(self._user) if self._user else "",
            "backend": self._backend_address,
            "state": states.get(self.state, ""),
        }

    def after_failed_login(self) -> None:
        """Reset protocol state (POP3's USER) so the client can start a new login."""

    def _internal_error(self) -> None:
        if self.state is FrontState.CLOSED:
            return
        self.reply_internal_error()
        self.close("internal error")

    def _start_splice(self, backend: BackendClient) -> None:
        assert self.transport is not None and backend.transport is not None
        self.state = FrontState.SPLICED
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

    def _ended(self, end: SpliceEnd) -> None:
        self._outcome = end.how
        self._log_session(end.from_client, end.from_backend)

    def _log_session(self, from_client: int, from_backend: int) -> None:
        _access_log.info(
            "{protocol} session from {client} user {user!r} backend {backend}: {outcome}, "
            "{bytes_from_client} bytes in, {bytes_from_backend} bytes out, {duration:.3f}s",
            kind=f"{self.protocol_name}.session",
            protocol=self.protocol_name,
            client=self.client.ip,
            client_port=self.client.port,
            listener=f"{self.client.local_ip}:{self.client.local_port}",
            tls=self._tls_summary(),
            user=printable(self._user),
            backend=self._backend_address,
            backend_tls=self._backend_tls,
            attempts=self._attempt,
            outcome=self._outcome,
            bytes_from_client=from_client,
            bytes_from_backend=from_backend,
            duration=self._clock.seconds() - self._started,
        )

    def _tls_summary(self) -> str:
        """The client leg's TLS for the access log, as the SMTP front writes it."""
        return HandshakeResult(self.client_tls, None).summary()


def _sleep(clock: IReactorTime, seconds: float) -> Deferred[None]:
    """A cancellable pause on the injected clock (for ``Auth-Wait``)."""
    d: Deferred[None] = Deferred(lambda _: call.cancel())
    call = clock.callLater(seconds, d.callback, None)
    return d
