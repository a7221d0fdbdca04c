"""Property tests for the SMTP front (L{relaygate.smtp.front} with its input runner, body relay
and backend leg) on a L{StringTransport} and a L{MemoryReactorClock}.

A session is a random byte stream (commands, bodies with dots, bare CR and LF, long lines,
CR, LF and NUL inside arguments, garbage) cut into random reads, with scripted backends that
answer as a function of the bytes they received only, at random moments. What must hold:
nothing raises or logs a failure; every command the front reads gets exactly one reply, before
the next command is read, and that reply fits the command; the same stream gives the same
replies and the same bytes at each backend whatever the reads; and a refused body (bare CR or
LF, or over the size limit) never reaches its end at the backend, whose connection gets
nothing more.
"""

from __future__ import annotations

import base64
import gc
import itertools
import re
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.mail import smtp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override

from relaygate.config.load import parse
from relaygate.listeners import new_server_tls
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Accept, Refuse
from relaygate.smtp.client_input import LineError
from relaygate.smtp.factory import SMTPFrontFactory
from relaygate.smtp.front import SMTPFront
from relaygate.smtp.settings import SMTPSettings
from tests import properties  # noqa: F401 (loads the Hypothesis profile)
from tests.smtp_harness import OTHER_BACKEND, FakeRouter, FrontHarness, make_config

MAX_SIZE = 160
"""A small C{max_message_size}, so random bodies cross it."""
MAX_LINE = 512
"""The smallest C{max_line_length} the config allows."""
END = b"\r\n.\r\n"
_REPLY = re.compile(rb"(\d{3})([ -])([^\r\n]*)\r\n")


# -- the session's bytes -------------------------------------------------------------------

_LOCALS = ("ok1", "ok2", "bad", "tmp", "drop", "refused", "other")
_recipient = st.sampled_from(_LOCALS).map(
    lambda local: b"RCPT TO:<%s@example.org>" % local.encode()
)
_line_end = st.sampled_from([b"\r\n"] * 6 + [b"\n"])
_command = (
    st.sampled_from(
        [
            b"EHLO client.test",
            b"HELO client.test",
            b"EHLO",
            b"MAIL FROM:<from@example.net>",
            b"MAIL FROM:<> SIZE=99999",
            b"MAIL FROM:<from@example.net> SIZE=10",
            b"DATA",
            b"RSET",
            b"NOOP",
            b"VRFY bob",
            b"HELP",
            b"QUIT",
            b"STARTTLS",
            b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret"),
            b"AUTH PLAIN",
            b"AUTH LOGIN",
            b"*",
            b"MAIL FROM:<a\rb@example.net>",
            b"RCPT TO:<a\0b@example.org>",
            b"NOOP a\rb",
            b"NOOP " + b"x" * (MAX_LINE - 7),
            b"NOOP " + b"x" * (MAX_LINE - 6),
            b"NOOP " + b"x" * 2 * MAX_LINE,
            b"",
            b"1234",
            b"\xff\xfe",
        ]
    )
    | _recipient
    | st.binary(max_size=20).filter(lambda b: b"\n" not in b)
)
_body_line = st.sampled_from(
    [
        *(b"Subject: hi", b"", b".", b"..", b".x", b"a\rb", b"a\nb", b"x" * 70, b"\r", b"\0"),
        # A body of exactly the limit, and one octet more:
        *(b"x" * (MAX_SIZE - 2), b"x" * (MAX_SIZE - 1)),
    ]
)
_endings = st.sampled_from(["stay", "half-close", "reset", "reset both"])


@st.composite
def _bodies(draw: st.DrawFn, fault: bool = False) -> bytes:
    """Body lines, and usually the final dot; with C{fault}, one bare CR, bare LF or too much."""
    lines = draw(
        st.lists(
            _body_line.filter(lambda b: b != b"." and b"\r" not in b and b"\n" not in b),
            max_size=4,
        )
    )
    if fault:
        injected = draw(st.sampled_from([b"a\rb", b"a\nb", b"\r", b"y" * (MAX_SIZE + 1)]))
        lines.insert(draw(st.integers(0, len(lines))), injected)
    else:
        lines += draw(st.lists(_body_line, max_size=3))
    body = b"".join(line + b"\r\n" for line in lines)
    if fault or draw(st.integers(0, 9)):
        body += b".\r\n"
    return body


@st.composite
def _transactions(draw: st.DrawFn) -> bytes:
    """MAIL, one to three RCPTs, DATA and a body: a transaction that usually reaches a backend."""
    recipients = draw(st.lists(_recipient, min_size=1, max_size=3))
    lines = [b"MAIL FROM:<from@example.net>", *recipients, b"DATA"]
    return b"".join(line + b"\r\n" for line in lines) + draw(_bodies())


@st.composite
def _streams(draw: st.DrawFn) -> bytes:
    """A client's whole input: usually EHLO first, then commands, bodies and transactions."""
    pieces = [b"EHLO client.test\r\n"] if draw(st.integers(0, 4)) else []
    for kind in draw(st.lists(st.integers(0, 5), max_size=10)):
        if kind == 0:
            pieces.append(draw(_transactions()))
        elif kind == 1:
            pieces.append(draw(_bodies()))
        else:
            pieces.append(draw(_command) + draw(_line_end))
    return b"".join(pieces)


@st.composite
def _reads(draw: st.DrawFn, stream: bytes) -> list[tuple[bytes, bool]]:
    """C{stream} cut into reads, each with whether the backends answer before the next one."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))))
    bounds = [0, *(c for c in cuts if c < len(stream)), len(stream)]
    return [(stream[start:end], draw(st.booleans())) for start, end in itertools.pairwise(bounds)]


def _config(auth: bool, max_errors: int, max_size: int) -> dict[str, Any]:
    config = make_config(
        max_message_size=max_size,
        max_line_length=MAX_LINE,
        max_errors=max_errors,
        max_recipients=2,
        backend_auth="none",
    )
    if auth:
        config["auth"] = {"http": "http://127.0.0.1:9/auth"}
        config["smtp"]["auth"] = ["none", "plain", "login"]
    return config


# -- the session ---------------------------------------------------------------------------


class _Wire(StringTransport):
    """A transport that keeps what was written after it began to close (nothing should be)."""

    def __init__(self, trace: list[tuple[str, bytes]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trace = trace
        self.late = b""

    @override
    def write(self, data: bytes) -> None:
        if self.disconnecting:
            self.late += data
            return
        if self.trace is not None:
            self.trace.append(("reply", data))
        super().write(data)


class _TracedFront(SMTPFront):
    """The front, noting each command it reads (a line, a refused line, a final dot)."""

    trace: list[tuple[str, bytes]]

    @override
    def lineReceived(self, line: bytes) -> None:
        self.trace.append(("command", b"<auth>" if self.mode == smtp.AUTH else line))
        super().lineReceived(line)

    @override
    def refuse_line(self, error: LineError) -> None:
        self.trace.append(("command", b"<refused>"))
        super().refuse_line(error)

    @override
    def feed_body(self, data: bytes) -> None:
        mark = len(self.trace)
        super().feed_body(data)
        if not self.in_body():
            # The final dot is read before its reply is written, even when that comes at once.
            self.trace.insert(mark, ("command", b"<dot>"))


class _Factory(SMTPFrontFactory):
    @override
    def buildProtocol(self, addr: IAddress | None) -> _TracedFront:
        front = _TracedFront(self.settings, self.router, self.reactor)
        front.factory = self
        return front


class _Backend:
    """A scripted backend: each reply depends only on the bytes received, never on timing."""

    def __init__(self, protocol: IProtocol, transport: _Wire, pipelining: bool) -> None:
        self.protocol, self.transport, self.pipelining = protocol, transport, pipelining
        self.stream = b""
        self.settled = 0
        """Where the last whole command or message ended in C{stream}."""
        self.in_body = False
        self.accepted = 0
        self.messages: list[bytes] = []
        self.hung_up = False
        """The backend closed the connection itself (QUIT, or a RCPT it drops at)."""
        self.lost = False

    def step(self) -> bool:
        """Answer what arrived; deliver the close. True if anything happened."""
        data = self.transport.value()[len(self.stream) :]
        self.stream += data
        for answer in self._answers() if data and not self.hung_up else []:
            if answer is None:
                self.hung_up = True
                self.transport.loseConnection()
            elif not self.transport.disconnecting:
                self.protocol.dataReceived(answer)
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
            return True
        return bool(data)

    def _answers(self) -> list[bytes | None]:
        """The replies to what arrived, in order; C{None} where the backend hangs up."""
        answers: list[bytes | None] = []
        while answers[-1:] != [None]:
            rest = self.stream[self.settled :]
            if self.in_body:
                at = (b"\r\n" + rest).find(END)
                if at < 0:
                    return answers
                self.messages.append(rest[:at])
                self.settled += at + 3
                self.in_body, self.accepted = False, 0
                answers.append(b"250 2.0.0 queued as %d\r\n" % len(self.messages))
                continue
            at = rest.find(b"\r\n")
            if at < 0:
                return answers
            self.settled += at + 2
            answers.extend(self._answer(rest[:at]))
        return answers

    def _answer(self, line: bytes) -> list[bytes | None]:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return [
                b"250-backend\r\n250 PIPELINING\r\n" if self.pipelining else b"250 backend\r\n"
            ]
        if verb in (b"MAIL", b"RSET", b"NOOP"):
            self.accepted = 0
            return [b"250 2.1.0 backend ok\r\n"]
        if verb == b"RCPT":
            path = line[8:]
            if path.startswith(b"<drop"):
                return [None]
            if path.startswith(b"<bad"):
                return [b"550 5.1.1 " + path + b" unknown\r\n"]
            if path.startswith(b"<tmp"):
                return [b"451 4.2.0 " + path + b" later\r\n"]
            self.accepted += 1
            return [b"250 2.1.5 " + path + b" ok\r\n"]
        if verb == b"DATA":
            self.in_body = self.accepted > 0
            return [b"354 go ahead\r\n" if self.in_body else b"554 5.5.1 no recipients\r\n"]
        if verb == b"QUIT":
            return [b"221 bye\r\n", None]
        return [b"500 5.5.2 backend: unknown\r\n"]

    def settled_bytes(self) -> tuple[bytes, bool]:
        """What arrived up to the last whole command or message, and whether a body was cut."""
        return self.stream[: self.settled], self.in_body


class _Session:
    """One front on a recording transport, with scripted backends and a driver."""

    def __init__(self, config: dict[str, Any], pipelining: bool) -> None:
        self.reactor = MemoryReactorClock()
        self.pipelining = pipelining
        router = FakeRouter()
        router.by_recipient[b"refused@example.org"] = Refuse("no")
        router.by_recipient[b"other@example.org"] = Accept((OTHER_BACKEND,))
        loaded = parse(config, "test.toml")
        factory = _Factory(
            loaded,
            loaded.listen[0],
            router,
            cast(IGatewayReactor, self.reactor),
            server_tls=new_server_tls(loaded.listen[0], loaded),
        )
        self.settings: SMTPSettings = factory.settings
        self.trace: list[tuple[str, bytes]] = []
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.front = factory.buildProtocol(peer)
        self.front.trace = self.trace
        self.client = _Wire(
            self.trace, peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 2525)
        )
        self.front.makeConnection(self.client)
        del self.trace[:]  # the greeting answers no command
        self.greeting = self.client.value()
        self.backends: list[_Backend] = []
        self.dialled = 0
        self.lost = False

    def settle(self, rounds: int = 1000) -> None:
        """Run the backends and deliver closes until nothing more happens (or for C{rounds}:
        each backend answers what it had received at the round's start)."""
        for _ in range(rounds):
            progressed = False
            while self.dialled < len(self.reactor.tcpClients):
                host, port, factory, _timeout, _bind = self.reactor.tcpClients[self.dialled]
                self.dialled += 1
                if self.reactor.connectors[self.dialled - 1].stoppedConnecting:
                    continue  # given up (the client left): no connection is made
                address = IPv4Address("TCP", host, port)
                protocol = factory.buildProtocol(address)
                assert protocol is not None
                transport = _Wire(peerAddress=address)
                protocol.makeConnection(transport)
                backend = _Backend(protocol, transport, self.pipelining)
                self.backends.append(backend)
                protocol.dataReceived(b"220 backend ESMTP\r\n")
                progressed = True
            for backend in self.backends:
                progressed = backend.step() or progressed
            if self.client.disconnecting and not self.lost:
                self.lost = True
                self.front.connectionLost(Failure(ConnectionDone()))
                progressed = True
            if not progressed:
                return
        if rounds == 1000:
            raise AssertionError("the session never settled")

    def play(self, reads: list[tuple[bytes, bool]], ending: str, rounds: int = 0) -> None:
        """The client sends C{reads}, then stays or half-closes; the session settles.

        Or C{ending} is C{reset}, C{reset both}: the client sends all, the backends get
        C{rounds} rounds to answer, and the client leaves while commands may still wait on a
        backend (with C{reset both}, the backends' connections are reset too).
        """
        for data, answer in reads:
            if self.client.producerState == "paused":
                self.settle()
            if self.client.disconnecting:
                break
            assert self.client.producerState == "producing", "reading paused for nothing"
            self.front.dataReceived(data)
            if answer and ending != "reset":
                self.settle()
        if ending.startswith("reset"):
            self.settle(rounds)
            self.hang_up()
            if ending == "reset both":
                for backend in self.backends:
                    if not backend.lost:
                        backend.lost = backend.hung_up = True
                        backend.protocol.connectionLost(Failure(ConnectionLost()))
        self.settle()
        if ending == "half-close" and not self.client.disconnecting:
            self.front.readConnectionLost()
            self.settle()

    def hang_up(self) -> None:
        """The client goes away (if the session is still open); the backends are let go."""
        if not self.lost:
            self.lost = True
            self.client.loseConnection()
            self.front.connectionLost(Failure(ConnectionLost()))
        self.settle()

    def outcome(self) -> tuple[bytes, list[tuple[bytes, bool]]]:
        """The client's replies, and each backend connection's settled bytes."""
        return self.client.value(), [backend.settled_bytes() for backend in self.backends]


# -- the checks ----------------------------------------------------------------------------

_ERRORS = {421, 500, 501, 502, 503, 504, 530, 535, 538, 554}
_FITS: dict[bytes, set[int]] = {
    b"NOOP": {250},
    b"VRFY": {252},
    b"HELP": {214},
    b"QUIT": {221},
    b"RSET": {250},
    b"EHLO": {250, 501},
    b"HELO": {250, 501},
    b"MAIL": {250, 501, 503, 530, 552},
    b"DATA": {354, 451, 503, 554},
}


def _replies(data: bytes) -> list[tuple[int, bytes]]:
    """Whole replies in C{data}: (code, text of the last line)."""
    replies: list[tuple[int, bytes]] = []
    at = 0
    while True:
        match = _REPLY.match(data, at)
        if match is None:
            return replies
        at = match.end()
        if match.group(2) == b" ":
            replies.append((int(match.group(1)), match.group(3)))


def _check_fits(case: SynchronousTestCase, command: bytes, code: int, text: bytes) -> None:
    """The reply is one its command can have (a backend's RCPT reply names its recipient)."""
    if code == 421 or command == b"<auth>":
        return
    if command == b"<refused>":
        case.assertEqual(code, 500)
        return
    if command == b"<dot>":
        case.assertTrue(code in (250, 550, 552) or 400 <= code < 500, (code, text))
        if code == 250:
            case.assertTrue(text.startswith(b"2.0.0 queued as"), text)
        return
    verb, _, rest = command.partition(b" ")
    verb = verb.upper()
    if verb == b"RCPT":
        if code in (250, 550) and not text.startswith(b"5.7.1"):
            case.assertIn(rest[3:].strip(), text, "a RCPT reply for another recipient")
        return
    if verb in _FITS:
        case.assertIn(code, _FITS[verb] | _ERRORS, (command, code, text))


def check_order(case: SynchronousTestCase, session: _Session, reset: bool = False) -> None:
    """Each command read gets one reply, before the next command is read, fitting it (with
    C{reset}, the command the client left waiting gets none)."""
    waiting: list[bytes] = []
    pending = b""
    answered = 0
    for kind, data in session.trace:
        if kind == "command":
            case.assertEqual(waiting, [], f"{data!r} read before the reply to {waiting!r}")
            waiting.append(data)
            continue
        pending += data
        replies = _replies(pending)
        for code, text in replies[answered:]:
            case.assertTrue(waiting, f"a reply {code} {text!r} to no command")
            _check_fits(case, waiting.pop(0), code, text)
        answered = len(replies)
    case.assertLessEqual(len(waiting), 1 if reset else 0, "commands never answered")
    case.assertEqual(_REPLY.sub(b"", pending), b"", "bytes that are not replies")
    if replies_closed(session):
        case.assertTrue(session.client.disconnecting)


def replies_closed(session: _Session) -> bool:
    """True when the last reply ends the session (QUIT's 221, or 421)."""
    replies = _replies(session.client.value())
    return bool(replies) and replies[-1][0] in (221, 421)


def _bare_newline(body: bytes) -> bool:
    """A CR or LF not in a CRLF pair (a CR at the very end may still get its LF)."""
    body = body[:-1] if body.endswith(b"\r") else body
    return body.count(b"\r") != body.count(b"\r\n") or body.count(b"\n") != body.count(b"\r\n")


def check_backends(case: SynchronousTestCase, session: _Session) -> None:
    """Each backend: nothing after its close; each message whole and clean; a cut body stays
    a clean prefix within the size limit, without its end."""
    for backend in session.backends:
        case.assertEqual(backend.transport.late, b"", "written to a closing backend")
        for message in backend.messages:
            case.assertLessEqual(len(message), session.settings.max_message_size)
            case.assertFalse(_bare_newline(message), message)
        partial = backend.stream[backend.settled :]
        if backend.hung_up:
            continue
        if backend.in_body:
            case.assertTrue(backend.transport.disconnecting, "a body left unfinished, open")
            case.assertLessEqual(len(partial), session.settings.max_message_size)
            case.assertFalse(_bare_newline(partial), partial)
        else:
            case.assertEqual(partial, b"", "half a command at a backend")


class FrontPropertyTests(SynchronousTestCase):
    """Random sessions on the front, cut into random reads."""

    def setUp(self) -> None:
        # Unhandled errors in Deferreds are logged when the Deferred is collected: collect
        # after every example, and only what the example made (what exists now is frozen).
        gc.collect()
        gc.freeze()
        self.addCleanup(gc.unfreeze)

    def run_session(
        self,
        stream: bytes,
        reads: list[tuple[bytes, bool]],
        *,
        auth: bool = False,
        max_errors: int = 50,
        pipelining: bool = True,
        ending: str = "stay",
        rounds: int = 0,
        max_size: int = MAX_SIZE,
    ) -> tuple[_Session, tuple[bytes, list[tuple[bytes, bool]]]]:
        """Play C{reads} on a new session, check nothing failed, and hang up."""
        self.assertEqual(b"".join(data for data, _ in reads), stream)
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        try:
            session = _Session(_config(auth, max_errors, max_size), pipelining)
            session.play(reads, ending, rounds)
            outcome = session.outcome()
            session.hang_up()
            gc.collect()
        finally:
            globalLogPublisher.removeObserver(events)
        bad = [
            e
            for e in events
            if "log_failure" in e or e["log_level"] in (LogLevel.error, LogLevel.critical)
        ]
        self.assertEqual(bad, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(session.client.late, b"")
        return session, outcome

    @given(st.data(), _streams(), st.booleans(), _endings, st.sampled_from([3, 50]))
    def test_replies_in_order_and_nothing_fails(
        self, data: st.DataObject, stream: bytes, auth: bool, ending: str, max_errors: int
    ) -> None:
        """Any stream, any reads: no failure logged, one fitting reply per command, in order."""
        reads = data.draw(_reads(stream))
        rounds = data.draw(st.integers(0, 2)) if ending.startswith("reset") else 0
        session, _ = self.run_session(
            stream, reads, auth=auth, max_errors=max_errors, ending=ending, rounds=rounds
        )
        check_order(self, session, reset=ending.startswith("reset"))
        check_backends(self, session)
        if ending == "half-close":
            self.assertTrue(session.client.disconnecting, "a half-closed session left open")

    @given(st.data(), _streams(), st.booleans(), st.sampled_from(["stay", "half-close"]))
    def test_same_outcome_whatever_the_reads(
        self, data: st.DataObject, stream: bytes, pipelining: bool, ending: str
    ) -> None:
        """One read or many: the same replies, the same bytes at each backend.

        With C{MAX_SIZE}, which the generated bodies reach and pass, a body's verdict (fits,
        552 too big, 550 5.6.11 bare CR/LF) must not depend on where its reads fall either.
        """
        kwargs: dict[str, Any] = {"pipelining": pipelining, "ending": ending, "max_size": MAX_SIZE}
        whole = self.run_session(stream, [(stream, True)], **kwargs)[1]
        cut = self.run_session(stream, data.draw(_reads(stream)), **kwargs)[1]
        self.assertEqual(cut, whole)

    @given(st.data(), _bodies(fault=True), st.sampled_from([b"", b"QUIT\r\n"]), st.booleans())
    def test_nothing_reaches_the_backend_after_a_refused_body(
        self, data: st.DataObject, body: bytes, after: bytes, pipelining: bool
    ) -> None:
        """A body with a bare CR or LF, or too big: 550 or 552, and its backend gets no more."""
        opening = b"EHLO c\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<ok1@example.org>\r\nDATA\r\n"
        again = b"MAIL FROM:<a@example.net>\r\nRCPT TO:<ok2@example.org>\r\nDATA\r\nok\r\n.\r\n"
        stream = opening + body + again + after
        session, _ = self.run_session(stream, data.draw(_reads(stream)), pipelining=pipelining)
        check_order(self, session)
        check_backends(self, session)
        codes = [code for code, _ in _replies(session.client.value())]
        self.assertIn(codes[5], (550, 552))
        self.assertEqual(codes[6:10], [250, 250, 354, 250])
        first, second = session.backends
        refused_at = first.settled_bytes()[0]
        self.assertTrue(refused_at.endswith(b"DATA\r\n"))
        self.assertTrue(first.in_body and first.transport.disconnecting)
        self.assertTrue(body.startswith(first.stream[first.settled :]))
        self.assertEqual(first.messages, [])
        self.assertEqual(second.messages, [b"ok\r\n"])


class FoundDefectTests(SynchronousTestCase):
    """What the properties found, as plain examples."""

    def test_client_leaving_while_data_waits_cuts_the_backend(self) -> None:
        """A client that leaves while DATA waits for the 354: the backend connection is cut,
        never sent a QUIT that, after the 354, would be message text."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        self.assertEqual(backend.received(), b"DATA\r\n")
        h.front.connectionLost(Failure(ConnectionLost()))
        backend.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self.assertEqual(backend.received(), b"")
        self.assertTrue(backend.transport.disconnecting)
