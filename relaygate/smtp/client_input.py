"""The SMTP front's input side: the queue of pipelined client bytes, lines taken from it, and
the reasons reading from the client is paused.

Stock C{LineOnlyReceiver} runs every line of a read at once, so a pipelined command could run
while an earlier one still waits on the router. The front instead keeps what the client sent in
an L{InputQueue}, and L{InputRunner} takes one line at a time when no command is pending
(RFC 2920). Reading
pauses while the queue holds more than L{BUFFER_LIMIT} behind a pending command, and while the
backend cannot take the body as fast as the client sends it (L{BackendPauses}).
"""

from __future__ import annotations

import enum
from collections.abc import Coroutine
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relaygate.smtp.phase import Phase, SessionPhase
from relaygate.smtp.replies import R_INTERNAL, Reply

BUFFER_LIMIT = 65536
"""Pipelined input held behind a pending command before reading pauses."""

OUTPUT = "output"
"""The pause reason while the client's transport holds more unsent replies than its bound."""


class LineError(enum.Enum):
    """A line the front answers as a client mistake instead of running it."""

    TOO_LONG = "too long"
    BAD_CHARS = "bad characters"
    SKIPPED = "skipped"
    """The end of an over-long line that was already answered: no reply."""


class InputQueue:
    """Client bytes not yet run, cut into lines of at most C{max_line_length} octets."""

    def __init__(self, max_line_length: int) -> None:
        self.buffer = b""
        self.discarding = False
        self.draining = False
        """Set while the front runs queued input: a nested call (a command finishing at
        once) returns, and the outer loop goes on in order."""
        self._limit = max_line_length

    def next_line(self) -> bytes | LineError | None:
        """Take the next line: C{None} when none is complete yet, a L{LineError} when one
        was consumed and must be answered as an error (or skipped), else the line without
        its CRLF. An over-long line is answered at once and dropped until its end: it is
        never buffered whole."""
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > self._limit:
                first = not self.discarding
                self.discarding = True
                self.buffer = b""
                if first:
                    return LineError.TOO_LONG
            return None
        line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
        if self.discarding:
            self.discarding = False
            return LineError.SKIPPED
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > self._limit:
            return LineError.TOO_LONG
        if b"\r" in line or b"\0" in line:
            return LineError.BAD_CHARS
        return line

    def take(self) -> bytes:
        """Everything buffered (body bytes go to the scanner in one piece)."""
        data, self.buffer = self.buffer, b""
        return data

    def push_back(self, data: bytes) -> None:
        """Put bytes read past the end of a message back in front of the queue."""
        self.buffer = data + self.buffer

    def discard(self) -> int | None:
        """Forget all queued input (after STARTTLS). The count dropped, or C{None} if none."""
        dropped = len(self.buffer) if self.buffer or self.discarding else None
        self.buffer = b""
        self.discarding = False
        return dropped

    @property
    def over_limit(self) -> bool:
        """True when more than L{BUFFER_LIMIT} octets wait."""
        return len(self.buffer) > BUFFER_LIMIT


class _Reading(Protocol):
    """The client transport's side of flow control."""

    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


class _Transport(_Reading, Protocol):
    """The client transport as a consumer of the session's replies, too."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


class ReadPauses:
    """Why reading from the client is paused; it resumes when no reason is left."""

    def __init__(self) -> None:
        self.producer: _Transport | None = None
        """The client's transport while the connection is up."""
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        """Stop reading from the client for C{reason} (until L{resume} for it)."""
        if not self.reasons and self.producer is not None:
            self.producer.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        """Lift the pause for C{reason}; reading resumes when no reason is left."""
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        producer = self.producer
        if not self.reasons and producer is not None:
            if not getattr(producer, "disconnecting", False):
                producer.resumeProducing()


@implementer(IPushProducer)
class ClientOutput:
    """Registered on the client's own transport: a client that does not read its replies is
    not read either.

    The transport pauses its producer while its write buffer is over its bound (for TCP its
    C{bufferSize}, L{relaygate.connect.RELAY_BUFFER_SIZE}; over TLS the TCP transport's bound
    on the ciphertext, through L{twisted.protocols.tls}'s producer membrane) and resumes it
    once the buffer has drained.
    Meanwhile reading pauses and no queued command runs, so the replies waiting for the client
    stay bounded (as the IMAP and POP3 fronts do).
    """

    def __init__(self, runner: InputRunner) -> None:
        self._runner = runner

    def pauseProducing(self) -> None:
        self._runner.pauses.pause(OUTPUT)

    def resumeProducing(self) -> None:
        self._runner.pauses.resume(OUTPUT)
        self._runner.run()

    def stopProducing(self) -> None:
        # The connection is going; the front cleans up in connectionLost.
        self._runner.pauses.resume(OUTPUT)


@implementer(IPushProducer)
class BackendPauses:
    """Registered on the backend's transport during DATA: its pauses pause the client's reads."""

    def __init__(self, pauses: ReadPauses) -> None:
        self._pauses = pauses

    def pauseProducing(self) -> None:
        self._pauses.pause("backend")

    def resumeProducing(self) -> None:
        self._pauses.resume("backend")

    def stopProducing(self) -> None:
        # The backend went away; the front learns it from the backend client itself.
        self._pauses.resume("backend")


class InputTarget(Protocol):
    """What the input loop drives: the front session's commands and body relay."""

    def in_body(self) -> bool:
        """True while a message body is being relayed (bytes go to L{feed_body})."""

    def feed_body(self, data: bytes) -> None:
        """Body bytes, in order."""

    def lineReceived(self, line: bytes) -> None:
        """One command line (or AUTH continuation), without its CRLF."""

    def refuse_line(self, error: LineError) -> None:
        """A line that cannot run: answer it as a client mistake."""

    def answer(self, reply: Reply | None) -> None:
        """A waiting command's reply (C{None}: it already answered, or closed)."""

    def resetTimeout(self) -> None:  # noqa: N802 (TimeoutMixin's name)
        """The client's silence starts now (L{twisted.protocols.policies.TimeoutMixin})."""

    def input_exhausted(self) -> None:
        """The client half-closed and everything it sent has run and been answered."""


class _Released:
    """The target of a runner whose session is over: nothing reaches the front any more."""

    def in_body(self) -> bool:
        return False

    def feed_body(self, data: bytes) -> None:
        pass

    def lineReceived(self, line: bytes) -> None:
        pass

    def refuse_line(self, error: LineError) -> None:
        pass

    def answer(self, reply: Reply | None) -> None:
        pass

    def resetTimeout(self) -> None:  # noqa: N802 (InputTarget's name)
        pass

    def input_exhausted(self) -> None:
        pass


_RELEASED = _Released()


class InputRunner:
    """Runs the client's input in order: one line at a time, body bytes to the relay, and
    nothing while a command waits on the router or the backend (L{start})."""

    _log = Logger()

    def __init__(self, target: InputTarget, phase: SessionPhase, max_line_length: int) -> None:
        self.queue = InputQueue(max_line_length)
        self.pauses = ReadPauses()
        self.pending: Deferred[Reply | None] | None = None
        """The waiting command's reply, while there is one."""
        self.input_ended = False
        """True once the client has half-closed: no more input will come."""
        self._target = target
        self._phase = phase
        self._output: ClientOutput | None = None

    def release(self) -> None:
        """The session is over and no reply is awaited: let go of the front.

        The two refer to each other; without this the session's objects wait for the cyclic
        garbage collector instead of going with their last reference (docs/performance.md).
        """
        if self.pending is None:
            self._target = _RELEASED

    def attach(self, transport: _Transport) -> None:
        """Read from C{transport}, and be its producer: its write buffer's bound pauses us."""
        self.pauses.producer = transport
        self._output = ClientOutput(self)
        transport.registerProducer(self._output, True)

    def detach(self) -> None:
        """The session closes: stop being the transport's producer, and read again.

        A transport closes (and TLS sends its close_notify) only once no producer is
        registered, and TLS must read the peer's close_notify.
        """
        transport = self.pauses.producer
        if self._output is not None and transport is not None:
            self._output = None
            transport.unregisterProducer()
            self.pauses.resume(OUTPUT)

    def received(self, data: bytes) -> None:
        """Bytes from the client: queue them and run what can run."""
        waiting = self._phase.waiting
        if not waiting:
            self._target.resetTimeout()
        if not waiting and not self.queue.buffer and self._target.in_body():
            # The DATA fast path: straight to the scanner, no copy into the line buffer.
            self._target.feed_body(data)
        else:
            self.queue.buffer += data
        self.run()

    def run(self) -> None:
        """Run queued input in order until a command waits or input runs out."""
        queue = self.queue
        if queue.draining:
            return
        queue.draining = True
        target = self._target
        exhausted = False
        try:
            while self._phase.runs_input and OUTPUT not in self.pauses.reasons:
                if target.in_body():
                    if not queue.buffer:
                        exhausted = True
                        break
                    target.feed_body(queue.take())
                    continue
                line = queue.next_line()
                if line is None:
                    exhausted = True
                    break
                if isinstance(line, bytes):
                    target.lineReceived(line)
                elif line is not LineError.SKIPPED:
                    target.refuse_line(line)
        finally:
            queue.draining = False
        if len(queue.buffer) > BUFFER_LIMIT:
            if self._phase.waiting:
                self.pauses.pause("pipeline")
        elif "pipeline" in self.pauses.reasons:
            self.pauses.resume("pipeline")
        if exhausted and self.input_ended:
            # Every command the client sent before its half-close has run and been answered.
            target.input_exhausted()

    def end_input(self) -> None:
        """The client half-closed: run what it sent, then tell the target it is all done."""
        self.input_ended = True
        self.run()

    def start(
        self, work: Coroutine[Any, Any, Reply | None] | Deferred[Reply], final: bool = False
    ) -> None:
        """Run a command that waits (router, backend); later input waits for its reply.

        @param work: the command's reply to come: a coroutine, or a chain of callbacks (the
            steps every message takes: a coroutine's start and resumption cost more).
        @param final: C{work} is the reply to a final dot, which a close does not cancel.
        """
        self._phase.command_waits(final)
        done: Deferred[Reply | None] = (
            work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)  # type: ignore[assignment]
        )
        self.pending = done
        done.addBoth(self._finish)

    def cancel(self) -> None:
        """The session ends: cancel the waiting command, unless it is a final dot's reply."""
        if self.pending is not None and not self._phase.final_pending:
            self.pending.cancel()

    def _finish(self, result: Reply | Failure | None) -> None:
        """Answer the command (or log what broke it), then run the input that waited for it.

        One callback rather than a chain of three: it runs for every command that waits.
        Whatever answering or running the next input raises is logged here, never left in
        the Deferred to surface as "Unhandled error in Deferred".
        """
        try:
            if isinstance(result, Failure):
                self._crashed(result)
            else:
                self._target.answer(result)
        except Exception:
            self._log.failure("unexpected error after an SMTP command's reply")
        try:
            self._resume()
        except Exception:
            self._log.failure("unexpected error after an SMTP command's reply")

    def _crashed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        self._log.failure("unexpected error in an SMTP session", failure)
        self._target.answer(R_INTERNAL)

    def _resume(self) -> None:
        self.pending = None
        self._phase.command_done()
        if self._phase.connected:
            # The client's silence starts now: what it waited for was the gateway.
            self._target.resetTimeout()
            self.run()
        elif self._phase.current is Phase.CLOSED:
            # A final dot's reply after the client left: the session's last step.
            self.release()
