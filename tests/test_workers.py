"""Tests for L{relaygate.workers}: N processes serving one listening socket."""

from __future__ import annotations

import fcntl
import io
import os
import re
import smtplib
import socket
import sys
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogPublisher,
    capturedLogs,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from relaygate.addresses import HostPort
from relaygate.config.load import load
from relaygate.demo import DemoFactory
from relaygate.reactor import IParentReactor
from relaygate.textlog import LineCopier, TextLogService
from relaygate.workers import (
    CONTROL_FD,
    LOG_PAUSE,
    LOG_PIPE_SIZE,
    WorkerPool,
    _WorkerProcess,
    bind_listener,
)


def transactions_logged(count: int) -> Deferred[None]:
    """Fires once C{count} SMTP transaction events have reached this (the parent) process.

    A worker relays its events over a pipe, so the event can arrive after the client has its
    reply: waiting for it (rather than reading the log at once) keeps the test free of that race.
    """
    seen: Deferred[None] = Deferred()
    transactions = 0

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        nonlocal transactions
        if event.get("kind") == "smtp.transaction":
            transactions += 1
            if transactions == count:
                globalLogPublisher.removeObserver(observe)
                seen.callback(None)

    globalLogPublisher.addObserver(observe)
    return seen


class BindTests(SynchronousTestCase):
    """The parent's sockets are bound once, non-blocking, ready to share."""

    def test_bind_listener(self) -> None:
        """A bound socket listens on the address, port 0 resolved by the kernel."""
        sock = bind_listener(HostPort("127.0.0.1", 0))
        self.addCleanup(sock.close)
        host, port = sock.getsockname()
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, 0)
        self.assertFalse(sock.getblocking())
        client = socket.create_connection(("127.0.0.1", port))
        client.close()


def send_one(port: int, recipient: str) -> dict[str, tuple[int, bytes]]:
    """Send one message through the gateway with smtplib (run in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("a@example.net", [recipient], b"Subject: w\r\n\r\nbody\r\n")


def send_one_from(port: int, recipient: str) -> int:
    """Send one message and QUIT, like L{send_one}; the client's own port."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        assert client.sock is not None
        client_port: int = client.sock.getsockname()[1]
        client.sendmail("a@example.net", [recipient], b"Subject: w\r\n\r\nbody\r\n")
    return client_port


class TextFile(io.StringIO):
    """twistd's log file in a test: what was written, and a wait for a pattern in it."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[tuple[re.Pattern[str], Deferred[None]]] = []

    def write(self, text: str) -> int:
        written = super().write(text)
        for item in list(self._waiting):
            if item[0].search(self.getvalue()):
                self._waiting.remove(item)
                item[1].callback(None)
        return written

    def wait_for(self, pattern: str) -> Deferred[None]:
        """Fires once the text written so far matches C{pattern} (within 30 seconds)."""
        found: Deferred[None] = Deferred()
        if re.search(pattern, self.getvalue()):
            found.callback(None)
        else:
            self._waiting.append((re.compile(pattern), found))
        return found.addTimeout(30, reactor)

    def lines(self) -> list[str]:
        """Every line written, without its time stamp (continuation lines as they are)."""
        return [
            line if line.startswith("\t") else line.split(" ", 1)[1]
            for line in self.getvalue().splitlines()
        ]


class _Reader:
    """A process transport's pipe reader: a real pipe's descriptor, and whether it reads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reading = True
        self.disconnected = False

    def fileno(self) -> int:
        return self.fd

    def stopReading(self) -> None:  # noqa: N802 (FileDescriptor's name)
        self.reading = False

    def startReading(self) -> None:  # noqa: N802 (FileDescriptor's name)
        self.reading = True


class LogPauseTests(SynchronousTestCase):
    """The parent reads a worker's log pipe at most once per pause while it has little to say."""

    def setUp(self) -> None:
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        self.clock = Clock()
        self.writes: list[str] = []
        pool = WorkerPool(cast(Any, None), 1, cast(IParentReactor, reactor))
        self.process = _WorkerProcess(pool, 0, LineCopier(self.writes.append), self.clock)
        self.reader = _Reader(read_end)
        transport = StringTransport()
        transport.pipes = {1: self.reader}  # type: ignore[attr-defined]
        self.process.makeConnection(transport)  # type: ignore[arg-type]

    def test_pipe_made_larger(self) -> None:
        """The pipe holds LOG_PIPE_SIZE bytes, so a pause does not stall a busy worker."""
        self.assertEqual(fcntl.fcntl(self.reader.fd, fcntl.F_GETPIPE_SZ), LOG_PIPE_SIZE)

    def test_short_read_pauses(self) -> None:
        """A read that emptied the pipe stops reading for LOG_PAUSE seconds."""
        self.process.childDataReceived(1, b"t [a worker=0] one\n")
        self.assertEqual(self.writes, ["t [a worker=0] one\n"])
        self.assertFalse(self.reader.reading)
        self.clock.advance(LOG_PAUSE - 0.001)
        self.assertFalse(self.reader.reading)
        self.clock.advance(0.001)
        self.assertTrue(self.reader.reading)

    def test_full_read_goes_on(self) -> None:
        """A read that filled the buffer left more in the pipe: reading goes on at once."""
        self.process.childDataReceived(1, b"x" * 8191 + b"\n")
        self.assertTrue(self.reader.reading)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_end_of_pipe_cancels_the_pause(self) -> None:
        """When the pipe ends, no resume is left waiting."""
        self.process.childDataReceived(1, b"t [a worker=0] one\n")
        self.process.childConnectionLost(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WorkerProcessTests(SynchronousTestCase):
    """The parent's side of one worker: log lines copied, control messages, the end."""

    def setUp(self) -> None:
        self.pool = WorkerPool(cast(Any, None), 1, cast(IParentReactor, reactor))
        self.pool.started[0] = Deferred()
        self.writes: list[str] = []
        self.process = _WorkerProcess(self.pool, 0, LineCopier(self.writes.append))
        self.transport = StringTransport()
        self.process.makeConnection(self.transport)  # type: ignore[arg-type]

    def test_log_lines_copied_in_batches(self) -> None:
        """Each read's whole lines are one write; a cut line waits for the rest."""
        self.process.childDataReceived(1, b"t [a worker=0] one\nt [a worker=0] tw")
        self.process.childDataReceived(1, b"o\nt [a worker=0] three\n")
        self.assertEqual(
            self.writes, ["t [a worker=0] one\n", "t [a worker=0] two\nt [a worker=0] three\n"]
        )

    def test_last_line_kept_at_exit(self) -> None:
        """A line without its end when the pipe closes is written, ended."""
        self.process.childDataReceived(1, b"t [a worker=0] last")
        self.process.childConnectionLost(1)
        self.assertEqual(self.writes, ["t [a worker=0] last\n"])

    def test_ready_and_reply_on_control_channel(self) -> None:
        """The ready notice fires C{started}; replies go to the parent's control."""
        self.process.childDataReceived(CONTROL_FD, b'{"kind": "ready", "pid": 4')
        self.process.childDataReceived(CONTROL_FD, b"2}\n")
        self.assertEqual(self.successResultOf(self.pool.started[0]), 42)
        answers: list[dict[str, Any]] = []
        self.patch(self.pool.control, "reply_received", answers.append)
        self.process.childDataReceived(CONTROL_FD, b'{"kind": "reply", "req": 7, "result": 1}\n')
        self.assertEqual(answers, [{"kind": "reply", "req": 7, "result": 1}])
        self.assertEqual(self.writes, [])

    def test_bad_control_message_logged(self) -> None:
        """A control line that is not a message is logged, not acted on."""
        with capturedLogs() as events:
            self.process.childDataReceived(CONTROL_FD, b"nonsense\n")
        self.assertEqual(
            [(e["log_format"], e["worker"], e["line"]) for e in events],
            [("worker {worker} sent {line!r}", 0, b"nonsense")],
        )
        self.assertNoResult(self.pool.started[0])

    def test_stderr_lines_logged_as_errors(self) -> None:
        """Each line on the worker's stderr is an error event of the parent."""
        with capturedLogs() as events:
            self.process.childDataReceived(2, b"Traceback\n  oops\n")
        self.assertEqual(
            [(e["log_level"], e["worker"], e["line"]) for e in events],
            [(LogLevel.error, 0, "Traceback"), (LogLevel.error, 0, "  oops")],
        )


class _Transport:
    """A worker's process transport whose C{signalProcess} raises C{error}."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.signalled = 0

    def signalProcess(self, name: str) -> None:  # noqa: N802 (IProcessTransport's name)
        self.signalled += 1
        raise self.error


class SignalTests(SynchronousTestCase):
    """L{WorkerPool.signal_all} ignores only a worker that has already exited."""

    def pool_with(self, *errors: Exception) -> tuple[WorkerPool, list[_Transport]]:
        pool = WorkerPool(cast(Any, None), 1, cast(IParentReactor, reactor))
        transports = [_Transport(error) for error in errors]
        for number, transport in enumerate(transports):
            pool.workers[number] = (cast(Any, None), transport)
        return pool, transports

    def test_exited_worker_is_skipped_quietly(self) -> None:
        """A worker that ended meanwhile is no error: nothing is logged."""
        pool, transports = self.pool_with(ProcessExitedAlready(), ProcessExitedAlready())
        with capturedLogs() as events:
            pool.signal_all("HUP")
        self.assertEqual([t.signalled for t in transports], [1, 1])
        self.assertEqual(events, [])

    def test_other_error_is_logged_as_failure(self) -> None:
        """Any other error is logged with its traceback, and the next worker still signalled."""
        pool, transports = self.pool_with(ValueError("bad signal"), ProcessExitedAlready())
        with capturedLogs() as events:
            pool.signal_all("NOPE")
        self.assertEqual([t.signalled for t in transports], [1, 1])
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.critical)
        self.assertEqual(events[0]["signal"], "NOPE")
        self.assertIsInstance(events[0]["log_failure"].value, ValueError)
        self.flushLoggedErrors(ValueError)


async def two_worker_setup(case: TestCase) -> tuple[EventLoggingObserver, str, str, int]:
    """Log events captured, a demo backend storing into a fresh maildir, and a config file for
    two workers relaying everything there: the events, the store, the file and the port."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    case.addCleanup(globalLogPublisher.removeObserver, events)
    store = case.mktemp()
    for sub in ("tmp", "new"):
        os.makedirs(os.path.join(store, sub))
    backend: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        DemoFactory(store, "backend.test")
    )
    case.addCleanup(backend.stopListening)
    port: int = backend.getHost().port  # type: ignore[attr-defined]
    path = case.mktemp()
    with open(path, "w") as f:
        f.write(
            '[server]\nname = "gw.test"\nworkers = 2\n'
            '[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:0"\n'
            f'[[route]]\nmatch = "*"\nbackends = ["127.0.0.1:{port}"]\n'
            "[smtp]\nxclient = false\n"
        )
    return events, store, path, port


async def start_two(case: TestCase, pool: WorkerPool) -> HostPort:
    """Start C{pool}'s two workers, stop them when the test ends unless it did, and give the
    address they listen on once both serve."""
    pool.startService()
    case.addCleanup(lambda: pool.stopService() if pool.running else None)
    [(_, address)] = pool.addresses()
    await DeferredList([pool.started[0], pool.started[1]], fireOnOneErrback=True)
    return address


class WorkerPoolTests(TestCase):
    """Two real worker processes relay mail; a dead one is restarted; stop ends them."""

    async def test_pool_relays_restarts_and_stops(self) -> None:
        """Mail goes through the workers before and after one is killed."""
        events, store, path, _ = await two_worker_setup(self)
        pool = WorkerPool(load(path), 2, cast(IParentReactor, reactor))
        address = await start_two(self, pool)

        first = transactions_logged(1)
        refused = await deferToThread(send_one, address.port, "one@example.org")
        self.assertEqual(refused, {})
        # The worker must have told the parent before it is killed.
        await first.addTimeout(10, reactor)

        process, transport = pool.workers[0]
        old_pid = transport.pid
        transport.signalProcess("KILL")
        await process.ended
        await pool.started[0]
        self.assertNotEqual(pool.workers[0][1].pid, old_pid)
        second = transactions_logged(1)
        refused = await deferToThread(send_one, address.port, "two@example.org")
        self.assertEqual(refused, {})
        await second.addTimeout(10, reactor)
        self.assertEqual(len(os.listdir(os.path.join(store, "new"))), 2)

        transactions = [e for e in events if e.get("kind") == "smtp.transaction"]
        self.assertEqual([e["outcome"] for e in transactions], ["delivered", "delivered"])
        self.assertTrue(all(e["worker"] in (0, 1) for e in transactions))

        # SIGHUP (certificate reload) must not end a worker; SIGTERM then ends each cleanly.
        pool.signal_all("HUP")
        processes = [process for process, _ in pool.workers.values()]
        await pool.stopService()
        self.assertEqual(pool.workers, {})
        self.assertEqual(
            [process.reason.type if process.reason else None for process in processes],
            [ProcessDone, ProcessDone],
        )


class TextLogPoolTests(TestCase):
    """With twistd's text log, real workers' lines reach it whole, tagged, and to the end."""

    async def test_lines_tagged_stderr_kept_and_nothing_lost(self) -> None:
        """Access lines carry the worker's number, stderr still reaches the parent's log, and
        each worker's last line (written as it exits) is in the log after the stop."""
        events, _, path, backend_port = await two_worker_setup(self)
        # The worker's interpreter, behind a script that first says something on stderr.
        python = os.path.abspath(self.mktemp())
        with open(python, "w") as f:
            f.write(f'#!/bin/sh\necho "starting up" >&2\nexec {sys.executable} "$@"\n')
        os.chmod(python, 0o755)
        out = TextFile()
        text_log = TextLogService(LogPublisher(textFileLogObserver(out)))
        text_log.startService()
        pool = WorkerPool(
            load(path), 2, cast(IParentReactor, reactor), python=python, text_log=text_log
        )
        address = await start_two(self, pool)
        pids = {number: transport.pid for number, (_, transport) in pool.workers.items()}

        logged = out.wait_for(r"smtp session \S+ from \S+ closed: quit\n")
        client_port = await deferToThread(send_one_from, address.port, "one@example.org")
        await logged
        [session] = [line for line in out.lines() if " smtp session " in line]
        number = next(n for n, pid in pids.items() if f" smtp session {pid:x}." in session)
        self.assertEqual(
            session,
            f"[relaygate.access#info worker={number}] smtp session {pids[number]:x}.1 "
            f"from 127.0.0.1:{client_port} closed: quit",
        )
        self.assertIn(
            f"[relaygate.access#info worker={number}] smtp transaction from "
            f"127.0.0.1:{client_port} <a@example.net> to 1 recipient(s) via "
            f"127.0.0.1:{backend_port}: delivered 250 Delivery in progress",
            out.lines(),
        )
        for worker in (0, 1):
            # A worker's lines come up to LOG_PAUSE after its ready notice: wait for them.
            await out.wait_for(
                rf"\[relaygate\.workers#info worker={worker}\] worker {pids[worker]} serving\n"
            )
        stderr = [
            (e["worker"], e["line"]) for e in events if e.get("log_format", "").endswith("{line}")
        ]
        self.assertEqual(sorted(stderr), [(0, "starting up"), (1, "starting up")])

        await pool.stopService()
        lines = out.lines()
        for worker in (0, 1):
            # A worker's very last line, written as its reactor stops.
            self.assertIn(
                f"[twisted.internet.base#info worker={worker}] Main loop terminated.", lines
            )
        # Nothing but whole, tagged lines: no line of one worker cut into another's.
        self.assertEqual(
            [line for line in lines if not re.match(r"\[\S+( \S+)? worker=[01]\] ", line)], []
        )
