"""The backend leg: an ESMTP client where each command yields one C{Deferred[Reply]}.

Twisted's L{smtp.ESMTPClient} drives a fixed sender state table; a relay needs the opposite:
the front decides each command as the client sends it. So this keeps ESMTPClient's reply parser
(multi-line replies, bad-reply detection) and replaces the state table with a FIFO of waiters,
which also makes RFC 2920 pipelining free: send several commands, await their replies in order.

TLS to the backend: L{SMTPBackendClient.start_tls} (STARTTLS, RFC 3207) or an implicit-TLS endpoint
from L{client_endpoint}; a failed handshake or verification fails with L{BackendTLSError}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from OpenSSL import SSL
from service_identity import CertificateError as NameCheckError
from service_identity import VerificationError
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.backend.connect import connect_with_failover, leg_tls_summary
from relaygate.backend.errors import BackendError, BackendLost, BackendTLSError
from relaygate.backend.policy import BackendPolicy, TLSCreatorFor
from relaygate.connect import set_no_delay
from relaygate.lazy_timeout import LazyTimeoutMixin
from relaygate.reactor import IGatewayReactor
from relaygate.smtp.replies import Reply
from relaygate.write_now import write_soon

CONNECTION_DONE = Failure(net_error.ConnectionDone())


class RelayTransport(Protocol):
    """What the relay uses of a TCP (or TLS) transport beyond L{ITransport}."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


@dataclass
class BackendInfo:
    """What the front reports about the backend leg in its logs."""

    address: str = ""
    extensions: dict[bytes, bytes | None] = field(default_factory=dict)
    tls: str = ""
    """The backend leg's TLS facts for logs: C{TLSv1.3 TLS_AES_256_GCM_SHA384 verified}."""


@implementer(IHandshakeListener)
class SMTPBackendClient(LazyTimeoutMixin, smtp.ESMTPClient):
    """An SMTP connection to a backend: C{command(line)} returns the reply to that line."""

    _log = Logger()
    debug = False
    # ESMTPClient.__setattr__ only warns about the deprecated tlsMode, which nothing here sets;
    # LineReceiver and SMTPClient write attributes on every line, so skip that Python call.
    __setattr__ = object.__setattr__

    def __init__(self, identity: bytes, clock: IReactorTime, reply_timeout: float) -> None:
        super().__init__(secret=None, identity=identity)
        self._reply_timeout = reply_timeout
        # One timer per connection (LazyTimeoutMixin): a reply's deadline moves, not the timer.
        self.timeout_clock = clock
        self._waiters: deque[Deferred[Reply]] = deque()
        self._lost: Failure | None = None
        self.greeting: Deferred[Reply] = Deferred()
        self._waiters.append(self.greeting)
        self.extensions: dict[bytes, bytes | None] = {}
        self.info = BackendInfo()
        self._starttls: tuple[Deferred[Reply], IOpenSSLClientConnectionCreator] | None = None
        self._handshake: Deferred[None] | None = None
        self.connected_at = 0.0
        """When the connection was made (the clock's seconds): how old a kept one is."""
        self.address: HostPort | None = None
        """The route entry this connection was made to (set by whoever connected it)."""

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.info.address = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        set_no_delay(self.transport)
        self.connected_at = self.timeout_clock.seconds()
        # Every code is "expected": the front, not a state table, decides what a reply means.
        self._expected = range(0, 1000)  # type: ignore[assignment]
        self._okresponse = self._failresponse = self._reply_received
        self.setTimeout(self._reply_timeout)

    @override
    def sendLine(self, line: bytes) -> None:
        """Send one command line, with the gateway's other writes of this turn (L{write_soon})."""
        write_soon(self.transport, line + b"\r\n")

    def command(self, line: bytes) -> Deferred[Reply]:
        """Send C{line} and return the Deferred of its reply (fails with L{BackendLost})."""
        waiter: Deferred[Reply] = Deferred()
        if self._lost is not None:
            waiter.errback(BackendLost(f"backend connection closed: {self._lost.value}"))
            return waiter
        if not self._waiters:
            self.setTimeout(self._reply_timeout)
        self._waiters.append(waiter)
        self.sendLine(line)
        return waiter

    def commands(self, lines: Sequence[bytes]) -> list[Deferred[Reply]]:
        """Send C{lines} in one write (RFC 2920 pipelining) and return their reply Deferreds."""
        waiters = []
        for _ in lines:
            waiter: Deferred[Reply] = Deferred()
            if self._lost is not None:
                waiter.errback(BackendLost("backend connection closed"))
            else:
                self._waiters.append(waiter)
            waiters.append(waiter)
        if self._lost is None:
            self.setTimeout(self._reply_timeout)
            assert self.transport is not None
            write_soon(self.transport, b"".join(line + b"\r\n" for line in lines))
        return waiters

    def expect_reply(self) -> Deferred[Reply]:
        """The Deferred of the next reply that answers no command of ours (the final dot's)."""
        waiter: Deferred[Reply] = Deferred()
        if self._lost is not None:
            waiter.errback(BackendLost("backend connection closed"))
            return waiter
        if not self._waiters:
            self.setTimeout(self._reply_timeout)
        self._waiters.append(waiter)
        return waiter

    def _reply_received(self, code: int, text: bytes) -> None:
        if not self._waiters:
            self._log.warn(
                "backend {backend} sent an unsolicited reply {code}",
                backend=self.info.address,
                code=code,
            )
            return
        waiter = self._waiters.popleft()
        if not self._waiters:
            self.setTimeout(None)
        if self._starttls is not None and self._starttls[0] is waiter:
            creator, self._starttls = self._starttls[1], None
            if code == 220:
                self._begin_tls(creator)
        waiter.callback(Reply(code, tuple(text.split(b"\n"))))

    def start_tls(self, creator: IOpenSSLClientConnectionCreator) -> Deferred[Reply]:
        """Send STARTTLS; on C{220} begin the handshake with C{creator} (see L{handshake}).

        The reply Deferred fires with the backend's reply either way; on anything but C{220}
        the connection stays plaintext and the caller decides.
        """
        waiter = self.command(b"STARTTLS")
        if not waiter.called:
            self._starttls = (waiter, creator)
        return waiter

    def _begin_tls(self, creator: IOpenSSLClientConnectionCreator) -> None:
        """Switch to TLS right after the 220, before anything else of that read is parsed.

        RFC 3207 section 4.2 and DESIGN rule 5: bytes the backend sent after its 220 in
        plaintext must not be read as replies on the TLS session. They are still in the
        line buffer here (the 220 is being handled inside L{dataReceived}), so clearing it
        discards them.
        """
        discarded = self.clearLineBuffer()
        if discarded:
            self._log.warn(
                "backend {backend} sent {count} bytes after its 220 to STARTTLS: discarded",
                backend=self.info.address,
                count=len(discarded),
            )
        self._handshake = Deferred()
        self.setTimeout(self._reply_timeout)
        assert self.transport is not None
        self.transport.startTLS(creator)  # type: ignore[attr-defined]

    def handshake(self) -> Deferred[None]:
        """Fires when the handshake begun by L{start_tls} is done (L{BackendTLSError} if not)."""
        if self._handshake is None:
            failed: Deferred[None] = Deferred()
            failed.errback(BackendTLSError("no TLS handshake under way"))
            return failed
        return self._handshake

    def handshakeCompleted(self) -> None:
        """The TLS layer finished its handshake: record the leg's facts for the logs."""
        summary = leg_tls_summary(self.transport)
        if summary:
            self.info.tls = summary
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            if not self._waiters:
                self.setTimeout(None)
            handshake.callback(None)

    def parse_extensions(self, reply: Reply) -> None:
        """Remember the extensions an EHLO reply advertised (keyword upper-cased)."""
        self.extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(b" ")
            self.extensions[keyword.upper()] = params or None
        self.info.extensions = self.extensions

    @override
    def sendError(self, exc: Exception) -> None:
        # Called by the reply parser for a line that is not an SMTP reply, and by timeouts.
        self._log.warn(
            "backend {backend} failed: {error}", backend=self.info.address, error=str(exc)
        )
        self._fail_all(Failure(BackendLost(str(exc))))
        self.abort_transport()

    @override
    def timeoutConnection(self) -> None:
        self.sendError(BackendLost("timed out waiting for the backend's reply"))

    @override
    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        super().connectionLost(reason)
        self.stop_timeouts()
        self._fail_all(reason)

    def _fail_all(self, reason: Failure) -> None:
        if self._lost is None:
            self._lost = reason
        waiters, self._waiters = self._waiters, deque()
        error: BackendError
        if reason.check(SSL.Error, VerificationError, NameCheckError):
            # How the TLS layer reports a failed handshake or chain verification (SSL.Error)
            # and service_identity a certificate without the backend's name or address.
            error = BackendTLSError(f"TLS with the backend failed: {reason.value}")
        else:
            error = BackendLost(f"backend connection closed: {reason.value}")
        for waiter in waiters:
            waiter.errback(error)
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            if not isinstance(error, BackendTLSError):
                error = BackendTLSError(f"TLS handshake with the backend failed: {reason.value}")
            handshake.errback(error)

    @property
    def is_open(self) -> bool:
        """True while the connection can carry commands."""
        return self._lost is None

    @property
    def is_idle(self) -> bool:
        """True when the connection is open and no reply, TLS start or handshake is awaited."""
        return (
            self._lost is None
            and not self._waiters
            and self._starttls is None
            and self._handshake is None
        )

    def close(self) -> None:
        """Say QUIT and close once the backend answers (or at once if it is gone)."""
        if self._lost is not None or self.transport is None:
            return
        self.command(b"QUIT").addBoth(self._close_transport)

    def _close_transport(self, _: object) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def abort_transport(self) -> None:
        """Close the TCP connection at once, discarding what is unsent."""
        if self.transport is not None:
            self.raw_transport.abortConnection()

    @property
    def raw_transport(self) -> RelayTransport:
        """The transport with the producer/consumer and abort methods the relay needs."""
        transport: Any = self.transport
        return transport  # type: ignore[no-any-return]

    def abort(self) -> None:
        """Drop the connection without a word: the backend discards an unfinished message."""
        if self.transport is not None and self._lost is None:
            self._fail_all(Failure(BackendLost("aborted by the gateway")))
            self.abort_transport()


async def connect_smtp_backend(
    reactor: IGatewayReactor,
    backends: Sequence[HostPort],
    identity: bytes,
    policy: BackendPolicy,
    implicit_tls: TLSCreatorFor | None = None,
    preamble: bytes = b"",
) -> tuple[SMTPBackendClient, HostPort]:
    """Connect to the first of C{backends} that accepts and greets with 220 (failover in order).

    @param identity: the name the client says in EHLO.
    @param implicit_tls: for C{backend_tls = "implicit"}: the TLS creator for each backend.
    @param preamble: bytes sent first on each connection (a PROXY header).
    @raise relaygate.backend.errors.BackendUnreachable: when none does;
        L{BackendTLSError} when the last one tried failed its TLS handshake.
    """

    async def greeted(client: SMTPBackendClient) -> None:
        greeting = await client.greeting
        if greeting.code != 220:
            raise BackendError(f"greeted with {greeting.summary()}")

    return await connect_with_failover(
        reactor,
        backends,
        policy.connect_timeout,
        lambda: SMTPBackendClient(identity, reactor, policy.reply_timeout),
        implicit_tls,
        preamble,
        check=greeted,
        drop=SMTPBackendClient.abort,
    )
