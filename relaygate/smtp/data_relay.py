"""The DATA relay: a message body moves from the client to the backend in raw chunks.

L{BodyScanner} finds the end of data, counts the size and spots bare newlines without copying
lines; L{MessageRelay} writes what it passes to the backend, pauses the client's reads while
the backend's transport is full, and cuts the backend off (never completing the message there)
when the body is refused. The reply to the final dot is the backend's own, never Twisted's
catch-all 550.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaygate.backend.errors import BackendError
from relaygate.connect import ack_promptly
from relaygate.smtp.backend import SMTPBackendClient
from relaygate.smtp.client_input import BackendPauses, ReadPauses
from relaygate.smtp.data import BodyFault, BodyScanner
from relaygate.smtp.replies import R_BACKEND_LOST, R_BARE_NEWLINE, R_TOO_BIG, Reply
from relaygate.smtp.session_facts import Transaction
from relaygate.write_now import write_now


def open_message(
    backend: SMTPBackendClient,
    transaction: Transaction,
    max_size: int,
    pauses: ReadPauses,
    drop_backend: Callable[[], None],
    client: str,
) -> Deferred[MessageRelay | tuple[str, Reply]]:
    """DATA at the backend: after its 354, a started L{MessageRelay} for the body; else the
    transaction's outcome (C{failed}, C{refused}) and the reply that ends it.

    A chain of callbacks rather than a coroutine: it runs for every message (the coroutine's
    start and resumption cost about as much as the rest of this step).
    """

    def answered(reply: Reply) -> MessageRelay | tuple[str, Reply]:
        if reply.code != 354:
            return "refused", reply
        relay = MessageRelay(backend, transaction, max_size, pauses, drop_backend, client, reply)
        relay.start()
        return relay

    def failed(failure: Failure) -> tuple[str, Reply] | Failure:
        if failure.check(BackendError):
            drop_backend()
            return "failed", R_BACKEND_LOST
        if failure.check(CancelledError):
            # The client left while DATA waited: the backend may be reading a body already,
            # where a polite QUIT would be message text (and its reply would never come).
            # Cut it off.
            backend.abort()
        return failure

    return backend.command(b"DATA").addCallbacks(answered, failed)


def outcome(reply: Reply) -> str:
    """A finished message's outcome for its transaction's record."""
    return "delivered" if reply.ok else ("refused" if reply.code >= 500 else "failed")


class MessageRelay:
    """One message body in flight from the client to C{backend}.

    @param drop_backend: called when the relay gives up the backend connection (refused body,
        backend lost): the front forgets it, so the next transaction connects anew.
    """

    _log = Logger()

    def __init__(
        self,
        backend: SMTPBackendClient,
        transaction: Transaction,
        max_size: int,
        pauses: ReadPauses,
        drop_backend: Callable[[], None],
        client: str,
        go_ahead: Reply,
    ) -> None:
        self.go_ahead = go_ahead
        """The backend's 354, for the client."""
        self.scanner = BodyScanner(max_size)
        self.backend: SMTPBackendClient | None = backend
        self.transaction = transaction
        self._pauses = pauses
        self._drop_backend = drop_backend
        self._client = client
        self._first_read = True

    def start(self) -> None:
        """Let the backend's transport pause the client's reads while it is full."""
        assert self.backend is not None
        self.backend.raw_transport.registerProducer(BackendPauses(self._pauses), True)

    def feed(self, data: bytes) -> bytes | None:
        """Pass body bytes on to the backend; at end-of-data return the bytes after the dot."""
        chunk = self.scanner.feed(data)
        if self._first_read:
            self._first_read = False
            if chunk.rest is None:
                # More of the body is coming, and the client only sends until its final dot
                # (the 354 is out). A body whole in its first read needs no prompt ACK.
                ack_promptly(self._pauses.producer)
        backend = self.backend
        if backend is not None:
            if self.scanner.fault is not None or not backend.is_open:
                # Never let a refused message reach its end-of-data at the backend: drop it.
                self._log.info(
                    "message from {client} refused: {fault}",
                    client=self._client,
                    fault=self.scanner.fault.value if self.scanner.fault else "backend lost",
                )
                self.abort()
                self._drop_backend()
            else:
                write_now(backend.transport, chunk.body)
        if chunk.rest is None:
            return None
        if self.backend is not None:
            self._stop()
        return chunk.rest

    def abort(self) -> None:
        """Cut the message off at the backend: its connection goes, unfinished."""
        backend = self.backend
        if backend is not None:
            self._stop()
            backend.abort()
            self.backend = None

    def _stop(self) -> None:
        backend = self.backend
        if backend is not None and backend.transport is not None and backend.is_open:
            backend.raw_transport.unregisterProducer()
        self._pauses.resume("backend")

    def final_reply(self) -> Deferred[Reply]:
        """The reply to the client's final dot: the scanner's verdict, else the backend's."""
        self.transaction.done = True
        self.transaction.record.size = self.scanner.size
        if self.scanner.fault is BodyFault.BARE_NEWLINE:
            return succeed(R_BARE_NEWLINE)
        if self.scanner.fault is BodyFault.TOO_BIG:
            return succeed(R_TOO_BIG)
        if self.backend is None:
            return succeed(R_BACKEND_LOST)
        return self.backend.expect_reply().addErrback(self._lost_before_the_reply)

    def _lost_before_the_reply(self, failure: Failure) -> Reply:
        failure.trap(BackendError)
        self._drop_backend()
        return R_BACKEND_LOST
