"""A two-way byte pipe between a client and its backend after login, with flow control.

Each side's transport is registered as the other side's streaming producer, so when one peer
reads slowly, Twisted pauses reading from the other (the model is Twisted's own
C{twisted/protocols/portforward.py}). Memory per session is then bounded by the transports'
write buffers, whatever the size of the mailbox being fetched. The protocols that own the two
transports feed the splice (L{Splice.from_client}, L{Splice.from_backend}) and report their
half-closes and losses; the splice reports once, when both connections are gone, how the
session ended and how many bytes went each way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaygate.connect import RELAY_BUFFER_SIZE, set_no_delay


@dataclass(frozen=True)
class SpliceEnd:
    """How a relayed session ended, for the access log."""

    how: str
    from_client: int
    from_backend: int
    duration: float


class Splice:
    """Relay bytes between two transports until both are closed or the pipe is idle too long."""

    _log = Logger()

    def __init__(
        self,
        client: ITransport,
        backend: ITransport,
        clock: IReactorTime,
        idle_timeout: float,
        on_end: Callable[[SpliceEnd], None],
    ) -> None:
        self._client = client
        self._backend = backend
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._on_end = on_end
        self._started = clock.seconds()
        self._last_activity = self._started
        self.from_client_bytes = 0
        self.from_backend_bytes = 0
        self._how = ""
        self._client_gone = False
        self._backend_gone = False
        self._client_eof = False
        self._backend_eof = False
        self._finished = False
        for transport in (client, backend):
            set_no_delay(transport, RELAY_BUFFER_SIZE)
        # A slow client pauses reading from the backend, and a slow backend pauses the client.
        IConsumer(client).registerProducer(IPushProducer(backend), True)
        IConsumer(backend).registerProducer(IPushProducer(client), True)
        self._timer: IDelayedCall | None = clock.callLater(idle_timeout, self._check_idle)

    def from_client(self, data: bytes) -> None:
        """The client sent C{data}: pass it to the backend."""
        self.from_client_bytes += len(data)
        self._last_activity = self._clock.seconds()
        if not self._backend_gone:
            self._backend.write(data)

    def from_backend(self, data: bytes) -> None:
        """The backend sent C{data}: pass it to the client."""
        self.from_backend_bytes += len(data)
        self._last_activity = self._clock.seconds()
        if not self._client_gone:
            self._client.write(data)

    def client_eof(self) -> None:
        """The client will send no more: tell the backend once what is buffered has gone."""
        self._first("client closed")
        self._client_eof = True
        self._half_close(self._backend)

    def backend_eof(self) -> None:
        """The backend will send no more: tell the client once what is buffered has gone."""
        self._first("backend closed")
        self._backend_eof = True
        self._half_close(self._client)

    def client_lost(self, reason: Failure) -> None:
        """The client connection is gone: close the backend after flushing to it."""
        self._first("client closed")
        self._client_gone = True
        if not self._backend_gone:
            self._backend.loseConnection()
        self._maybe_finish()

    def backend_lost(self, reason: Failure) -> None:
        """The backend connection is gone: close the client after flushing to it."""
        self._first("backend closed")
        self._backend_gone = True
        if not self._client_gone:
            self._client.loseConnection()
        self._maybe_finish()

    def _first(self, how: str) -> None:
        if not self._how:
            self._how = how

    def _half_close(self, transport: ITransport) -> None:
        lose_write = getattr(transport, "loseWriteConnection", None)
        if ISSLTransport.providedBy(transport) and not (self._client_eof and self._backend_eof):
            # A connection that switched to TLS (startTLS) inherits FileDescriptor's
            # loseWriteConnection, which would send a bare FIN past the TLS layer. TLS ends
            # writing with close_notify (loseConnection), and still reads what comes after.
            transport.loseConnection()
            return
        if lose_write is not None and not (self._client_eof and self._backend_eof):
            try:
                lose_write()
            except (OSError, ValueError):
                # The connection closed under us (its socket is gone); its own
                # connectionLost ends the splice, so only make sure it is closing.
                self._log.debug("half-close of a closed connection")
                transport.loseConnection()
            return
        # Both directions are finished: Twisted reports no loss for a connection that was
        # half-closed both ways, so close both for real (after their buffers are sent).
        for end in (self._client, self._backend):
            end.loseConnection()

    def _check_idle(self) -> None:
        idle = self._clock.seconds() - self._last_activity
        if idle < self._idle_timeout:
            self._timer = self._clock.callLater(self._idle_timeout - idle, self._check_idle)
            return
        self._timer = None
        self._first("idle timeout")
        self._log.info("relay idle for {seconds}s: closing", seconds=self._idle_timeout)
        # Nothing moved for the whole timeout, so there is nothing worth flushing, and a peer
        # that stopped reading would keep a graceful close waiting forever.
        for transport, gone in (
            (self._client, self._client_gone),
            (self._backend, self._backend_gone),
        ):
            if not gone:
                abort = getattr(transport, "abortConnection", None)
                if abort is not None:
                    abort()
                else:
                    transport.loseConnection()

    def _maybe_finish(self) -> None:
        if self._finished or not (self._client_gone and self._backend_gone):
            return
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._on_end(
            SpliceEnd(
                how=self._how,
                from_client=self.from_client_bytes,
                from_backend=self.from_backend_bytes,
                duration=self._clock.seconds() - self._started,
            )
        )
