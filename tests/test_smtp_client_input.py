"""Unit tests for L{relaygate.smtp.client_input}: line limits and pipelined input run in order,
through the front and on their own."""

from __future__ import annotations

from typing import cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from relaygate.config.load import parse
from relaygate.listeners import new_server_tls
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Decision, Refuse
from relaygate.smtp.client_input import (
    BUFFER_LIMIT,
    BackendPauses,
    ClientOutput,
    InputQueue,
    InputRunner,
    LineError,
    ReadPauses,
)
from relaygate.smtp.factory import SMTPFrontFactory
from relaygate.smtp.phase import SessionPhase
from relaygate.smtp.replies import R_HELP, R_INTERNAL, R_OK, Reply
from tests.certs import make_pki
from tests.smtp_harness import FakeRouter, FrontHarness, make_config


class InputLimitTests(SynchronousTestCase):
    """Bad input gets a clear error, never a crash or unbounded buffering."""

    def test_long_line(self) -> None:
        """A command line over 2048 octets gets 500 5.5.2; the next command works."""
        h = FrontHarness()
        h.replies()
        h.send(b"NOOP " + b"x" * 2050 + b"\r\nNOOP\r\n")
        self.assertEqual(h.replies(), b"500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n")

    def test_long_line_without_end_is_not_buffered(self) -> None:
        """Bytes of an over-long line are dropped as they come, answered once."""
        h = FrontHarness()
        h.replies()
        for _ in range(10):
            h.send(b"x" * 4096)
        self.assertEqual(h.replies(), b"500 5.5.2 Error: line too long\r\n")
        self.assertLessEqual(len(h.front._runner.queue.buffer), 4096)
        h.send(b"\r\nNOOP\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok\r\n")

    def test_cr_inside_a_command(self) -> None:
        """A bare CR inside a command line is refused, not passed on."""
        h = FrontHarness()
        h.replies()
        h.send(b"HELO a\rMAIL FROM:<x@y>\r\n")
        self.assertEqual(h.replies(), b"500 5.5.2 Error: CR, LF or NUL inside a command line\r\n")

    def test_nul_inside_a_command(self) -> None:
        """A NUL inside a command line is refused."""
        h = FrontHarness()
        h.replies()
        h.send(b"HELO a\0b\r\n")
        self.assertEqual(h.replies(), b"500 5.5.2 Error: CR, LF or NUL inside a command line\r\n")

    def test_unknown_command(self) -> None:
        """An unknown verb gets 500 5.5.2."""
        h = FrontHarness()
        h.replies()
        h.send(b"BOGUS\r\n\xff\xfe\r\n")
        self.assertEqual(
            h.replies(),
            b"500 5.5.2 Error: command not recognized\r\n"
            b"500 5.5.2 Error: command not recognized\r\n",
        )

    def test_too_many_errors(self) -> None:
        """The fifth error (max_errors) ends the session with 421."""
        h = FrontHarness()
        h.replies()
        h.send(b"BOGUS\r\n" * 6)
        self.assertEqual(
            h.replies(),
            b"500 5.5.2 Error: command not recognized\r\n" * 4
            + b"421 4.7.0 Error: too many errors\r\n",
        )
        self.assertTrue(h.client.disconnecting)

    def test_lf_only_line_ends_accepted(self) -> None:
        """Commands ending in a bare LF are understood (as most MTAs do)."""
        h = FrontHarness()
        h.replies()
        h.send(b"NOOP\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok\r\n")


class PipelinedInputTests(SynchronousTestCase):
    """Commands sent together run one at a time, in order (RFC 2920)."""

    def test_client_pipelining_gets_replies_in_order(self) -> None:
        """RCPT, RCPT, DATA in one write: each reply in order, DATA only after the RCPTs."""
        h = FrontHarness()
        h.send(b"EHLO c\r\n")
        h.replies()
        h.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@d>\r\nDATA\r\n")
        backend = h.connect_backend()
        backend.reply(b"250-backend\r\n250 PIPELINING\r\n")
        self.assertEqual(h.replies(), b"250 2.1.0 Ok\r\n")
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 first\r\n")
        self.assertEqual(h.replies(), b"250 2.1.5 first\r\n")
        backend.received()
        backend.reply(b"250 2.1.5 second\r\n")
        self.assertEqual(h.replies(), b"250 2.1.5 second\r\n")
        self.assertEqual(backend.received(), b"DATA\r\n")
        backend.reply(b"354 go ahead\r\n")
        self.assertEqual(h.replies(), b"354 go ahead\r\n")


class _Producer:
    """Records the client transport's flow-control calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.disconnecting = False

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.calls.append("register")

    def unregisterProducer(self) -> None:
        self.calls.append("unregister")


class _Target:
    """An input target that records what the runner hands it."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.refused: list[LineError] = []
        self.body: list[bytes] = []
        self.answers: list[Reply | None] = []
        self.body_open = False
        self.timer_resets = 0
        self.exhausted = 0

    def in_body(self) -> bool:
        return self.body_open

    def feed_body(self, data: bytes) -> None:
        self.body.append(data)

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def refuse_line(self, error: LineError) -> None:
        self.refused.append(error)

    def answer(self, reply: Reply | None) -> None:
        self.answers.append(reply)

    def resetTimeout(self) -> None:  # noqa: N802 (TimeoutMixin's name)
        self.timer_resets += 1

    def input_exhausted(self) -> None:
        self.exhausted += 1


def runner(max_line_length: int = 512) -> tuple[InputRunner, _Target, SessionPhase]:
    """A runner on a connected session's phase, with a recording target."""
    target = _Target()
    phase = SessionPhase()
    phase.connection_made(implicit_tls=False, delay_greeting=False)
    return InputRunner(target, phase, max_line_length), target, phase


class InputQueueTests(SynchronousTestCase):
    """L{InputQueue} on its own: lines, over-long lines, bad characters."""

    def test_lines_in_order(self) -> None:
        """CRLF and bare LF end lines; an incomplete line waits."""
        queue = InputQueue(512)
        queue.buffer = b"NOOP\r\nHELP\nRS"
        self.assertEqual(queue.next_line(), b"NOOP")
        self.assertEqual(queue.next_line(), b"HELP")
        self.assertIsNone(queue.next_line())
        self.assertEqual(queue.buffer, b"RS")

    def test_over_long_line_answered_once_and_skipped(self) -> None:
        """A line longer than the limit is refused at once, its tail skipped silently."""
        queue = InputQueue(10)
        queue.buffer = b"X" * 11
        self.assertIs(queue.next_line(), LineError.TOO_LONG)
        self.assertEqual(queue.buffer, b"")
        queue.buffer = b"X" * 20
        self.assertIsNone(queue.next_line())
        queue.buffer = b"XX\r\nNOOP\r\n"
        self.assertIs(queue.next_line(), LineError.SKIPPED)
        self.assertEqual(queue.next_line(), b"NOOP")

    def test_complete_line_over_the_limit(self) -> None:
        """The limit counts the CRLF (RFC 5321's 512 octets)."""
        queue = InputQueue(10)
        queue.buffer = b"12345678\r\n123456789\r\n"
        self.assertEqual(queue.next_line(), b"12345678")
        self.assertIs(queue.next_line(), LineError.TOO_LONG)

    def test_cr_or_nul_inside(self) -> None:
        """A CR or NUL inside a line is refused."""
        queue = InputQueue(512)
        queue.buffer = b"NO\rOP\r\nNO\0OP\r\n"
        self.assertIs(queue.next_line(), LineError.BAD_CHARS)
        self.assertIs(queue.next_line(), LineError.BAD_CHARS)

    def test_discard(self) -> None:
        """discard() drops everything and says how much (None when nothing was queued)."""
        queue = InputQueue(512)
        self.assertIsNone(queue.discard())
        queue.buffer = b"EHLO x\r\n"
        self.assertEqual(queue.discard(), 8)
        self.assertEqual(queue.buffer, b"")

    def test_push_back_and_limit(self) -> None:
        """Bytes after a message go back in front; over BUFFER_LIMIT the queue says so."""
        queue = InputQueue(512)
        queue.buffer = b"B"
        queue.push_back(b"A")
        self.assertEqual(queue.take(), b"AB")
        queue.buffer = b"x" * BUFFER_LIMIT
        self.assertFalse(queue.over_limit)
        queue.buffer += b"x"
        self.assertTrue(queue.over_limit)


class ReadPausesTests(SynchronousTestCase):
    """L{ReadPauses}: reading resumes only when every reason is lifted."""

    def test_reasons(self) -> None:
        """Two reasons pause once and resume once, when the last one goes."""
        pauses = ReadPauses()
        producer = _Producer()
        pauses.producer = producer
        pauses.pause("backend")
        pauses.pause("pipeline")
        pauses.resume("backend")
        self.assertEqual(producer.calls, ["pause"])
        pauses.resume("pipeline")
        self.assertEqual(producer.calls, ["pause", "resume"])
        pauses.resume("pipeline")
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_no_resume_while_disconnecting(self) -> None:
        """A transport that is closing is not resumed."""
        pauses = ReadPauses()
        producer = _Producer()
        pauses.producer = producer
        pauses.pause("backend")
        producer.disconnecting = True
        pauses.resume("backend")
        self.assertEqual(producer.calls, ["pause"])

    def test_backend_pauses(self) -> None:
        """The producer registered on the backend pauses and resumes the client's reads."""
        pauses = ReadPauses()
        producer = _Producer()
        pauses.producer = producer
        backend = BackendPauses(pauses)
        backend.pauseProducing()
        backend.stopProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])


class InputRunnerTests(SynchronousTestCase):
    """L{InputRunner} with a recording target: order, waiting commands, the body."""

    def test_lines_run_in_order(self) -> None:
        """Every complete line runs, in order; refusals go to refuse_line."""
        run, target, _ = runner()
        run.received(b"A\r\nB\0\r\nC\r\nD")
        self.assertEqual(target.lines, [b"A", b"C"])
        self.assertEqual(target.refused, [LineError.BAD_CHARS])
        self.assertEqual(target.timer_resets, 1)

    def test_waiting_command_holds_later_lines(self) -> None:
        """Lines after a waiting command run only when it has its reply."""
        run, target, phase = runner()
        waiting: Deferred[Reply | None] = Deferred()

        async def work() -> Reply | None:
            return await waiting

        run.start(work())
        run.received(b"A\r\nB\r\n")
        self.assertEqual(target.lines, [])
        self.assertTrue(phase.waiting)
        waiting.callback(R_OK)
        self.assertEqual(target.answers, [R_OK])
        self.assertEqual(target.lines, [b"A", b"B"])
        self.assertIsNone(run.pending)

    def test_body_bytes_bypass_the_line_queue(self) -> None:
        """During a body, bytes go to feed_body without being split into lines."""
        run, target, _ = runner()
        target.body_open = True
        run.received(b"line one\r\nline")
        self.assertEqual(target.body, [b"line one\r\nline"])
        self.assertEqual(target.lines, [])

    def test_cancel_spares_a_final_reply(self) -> None:
        """cancel() cancels a waiting command but not a final dot's reply."""
        run, target, _ = runner()
        first: Deferred[Reply | None] = Deferred()

        async def wait_for(d: Deferred[Reply | None]) -> Reply | None:
            return await d

        run.start(wait_for(first))
        run.cancel()
        self.assertEqual(target.answers, [])
        self.assertIsNone(run.pending)
        final: Deferred[Reply | None] = Deferred()
        run.start(wait_for(final), final=True)
        run.cancel()
        self.assertIsNotNone(run.pending)
        final.callback(R_OK)
        self.assertEqual(target.answers, [R_OK])

    def test_unexpected_error_answers_451(self) -> None:
        """A command that raises is logged and answered with the internal-error reply."""
        run, target, _ = runner()

        async def broken() -> Reply | None:
            raise ValueError("bug")

        run.start(broken())
        self.assertEqual(target.answers, [R_INTERNAL])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_failure_after_the_reply_is_logged(self) -> None:
        """An error raised while running the input queued behind a command is logged once and
        leaves no failure in the command's Deferred (issue #11, defect 4)."""
        run, target, _ = runner()
        waiting: Deferred[Reply | None] = Deferred()

        async def work() -> Reply | None:
            return await waiting

        def broken(line: bytes) -> None:
            raise ValueError(line)

        run.start(work())
        chain = run.pending
        assert chain is not None
        run.received(b"NOOP\r\n")
        target.lineReceived = broken  # type: ignore[method-assign]
        waiting.callback(R_OK)
        self.assertIsNone(self.successResultOf(chain))
        [logged] = self.flushLoggedErrors(ValueError)
        self.assertEqual(logged.value.args, (b"NOOP",))
        self.assertEqual(target.answers, [R_OK])


class _TCPTransport(StringTransport):
    """A L{StringTransport} that takes the TCP options the front sets."""

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 (ITCPTransport's name)
        """Nothing to set in memory."""


class OutputBoundTests(SynchronousTestCase):
    """A client that does not read its replies is not read (issue #11, defect 1)."""

    def test_unread_replies_pause_reading_and_commands(self) -> None:
        """While the transport's write buffer is over its bound, nothing more is read or run."""
        h = FrontHarness()
        self.assertEqual(h.replies(), b"220 gw.test ESMTP\r\n")
        output = h.client.producer
        assert isinstance(output, ClientOutput)
        # What a TCP transport does when its write buffer passes its bound.
        output.pauseProducing()
        self.assertEqual(h.client.producerState, "paused")
        h.send(b"NOOP\r\nHELP\r\n")
        self.assertEqual(h.replies(), b"")
        output.resumeProducing()
        self.assertEqual(h.client.producerState, "producing")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok\r\n" + R_HELP.to_wire())

    def test_output_pause_keeps_other_pauses(self) -> None:
        """Reading resumes only when the backend's pause (a full backend) is lifted too."""
        h = FrontHarness()
        output = h.client.producer
        assert output is not None
        output.pauseProducing()
        h.front._runner.pauses.pause("backend")
        output.resumeProducing()
        self.assertEqual(h.client.producerState, "paused")
        h.front._runner.pauses.resume("backend")
        self.assertEqual(h.client.producerState, "producing")

    def test_close_stops_being_the_producer(self) -> None:
        """QUIT unregisters the producer (a transport closes only without one) and reads again."""
        h = FrontHarness()
        output = h.client.producer
        assert output is not None
        output.pauseProducing()
        h.send(b"QUIT\r\n")
        output.resumeProducing()
        self.assertEqual(h.replies(), b"220 gw.test ESMTP\r\n221 2.0.0 gw.test Bye\r\n")
        self.assertIsNone(h.client.producer)
        self.assertEqual(h.client.producerState, "producing")
        self.assertTrue(h.client.disconnecting)

    def test_bound_over_tls_is_the_tcp_transports(self) -> None:
        """Over implicit TLS the TCP transport below TLS pauses the front, which stops reading."""
        pki = make_pki(self.mktemp())
        config = make_config()
        config["listen"][0]["tls"] = "implicit"
        config["tls"] = {"certificate": pki.server.certificate, "key": pki.server.key}
        loaded = parse(config, "test.toml")
        server_tls = new_server_tls(loaded.listen[0], loaded)
        assert server_tls is not None
        reactor = MemoryReactorClock()
        factory = SMTPFrontFactory(
            loaded,
            loaded.listen[0],
            FakeRouter(),
            cast(IGatewayReactor, reactor),
            server_tls=server_tls,
        )
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        tls = TLSMemoryBIOFactory(server_tls, False, factory).buildProtocol(peer)
        tcp = _TCPTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 465))
        tls.makeConnection(tcp)
        membrane = tcp.producer
        assert membrane is not None
        membrane.pauseProducing()
        self.assertEqual(tcp.producerState, "paused")
        membrane.resumeProducing()
        self.assertEqual(tcp.producerState, "producing")

    def test_end_of_input_after_the_waiting_command(self) -> None:
        """After a half-close the target hears that input is done only once every queued
        line has run, behind a waiting command too."""
        run, target, _ = runner()
        waiting: Deferred[Reply | None] = Deferred()

        async def work() -> Reply | None:
            return await waiting

        run.start(work())
        run.received(b"A\r\nB")
        run.end_input()
        self.assertEqual(target.exhausted, 0)
        waiting.callback(R_OK)
        self.assertEqual(target.lines, [b"A"])
        self.assertEqual(target.exhausted, 1)


class PipelineLimitTests(SynchronousTestCase):
    """Reading pauses while more than BUFFER_LIMIT octets wait behind a pending command
    (issue #11, defect 8), and resumes once the queue has drained."""

    def test_input_over_the_limit_pauses_reading(self) -> None:
        """Over BUFFER_LIMIT queued behind a RCPT waiting on the router: reading pauses; the
        router's answer runs the queue, every command is answered, and reading resumes."""
        h = FrontHarness()
        answer: Deferred[Decision] = Deferred()
        h.router.answer = answer
        h.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
        h.replies()
        noops = BUFFER_LIMIT // len(b"NOOP\r\n")
        h.send(b"NOOP\r\n" * noops)
        self.assertEqual(h.client.producerState, "producing")
        h.send(b"NOOP\r\n")
        self.assertEqual(h.client.producerState, "paused")
        self.assertEqual(h.replies(), b"")
        answer.callback(Refuse("No such user"))
        self.assertEqual(
            h.replies(), b"550 5.7.1 No such user\r\n" + b"250 2.0.0 Ok\r\n" * (noops + 1)
        )
        self.assertEqual(h.client.producerState, "producing")

    def test_runner_pauses_only_while_a_command_waits(self) -> None:
        """The same amount of input with no command waiting runs at once: no pause."""
        run, target, _ = runner()
        producer = _Producer()
        run.pauses.producer = producer
        run.received(b"x\r\n" * (BUFFER_LIMIT // 3 + 1))
        self.assertEqual(producer.calls, [])
        self.assertEqual(len(target.lines), BUFFER_LIMIT // 3 + 1)
