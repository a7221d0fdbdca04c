"""The gateway's connection to an IMAP or POP3 backend during login: lines in, bytes out.

The login dialogues (L{relaygate.imap}, L{relaygate.pop3}) read the backend's answers one line
(or one IMAP literal) at a time, each read a L{Deferred} that times out on the injected clock.
Once the login is done, L{LineBackendClient.attach} hands the connection to the splice and
everything the backend sends goes straight to the client.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.backend.connect import leg_tls_summary
from relaygate.backend.errors import BackendError, BackendTLSError
from relaygate.splice import Splice


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class LineBackendClient(Protocol):
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
        summary = leg_tls_summary(self.transport)
        if summary:
            self.tls = summary
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
