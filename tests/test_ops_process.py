"""A real ``twistd relaygate`` process: drain on SIGTERM, reload on SIGHUP, metrics, kick.

Each test starts the gateway as its own process on port 0 and learns its ports from its log;
backends are scripted servers in the test's reactor. Every wait is for a line the process
printed, a reply on a socket, or the process's end: nothing sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import treq
from twisted.internet import inotify
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from typing_extensions import override

from relaygate.ops.probe import ProbeReader
from tests.peers import ScriptedBackend, start_backend

reactor: Any = _global_reactor
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
# A bound on waiting for a line or an exit: a test that would wait longer has failed.
WAIT = 30.0


class Gateway(ProcessProtocol):
    """A ``twistd -n relaygate`` child: its output, lines to wait for, and its end."""

    def __init__(self) -> None:
        self.output = b""
        self._waiting: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]], int]] = []
        self.ended: Deferred[int] = Deferred()
        self.exit_code: int | None = None

    def wait_for(self, pattern: bytes, after: int = 0) -> Deferred[re.Match[bytes]]:
        """Fire with the first match of C{pattern} in the output from offset C{after} on."""
        compiled = re.compile(pattern)
        waiting: Deferred[re.Match[bytes]] = Deferred()
        waiting.addTimeout(WAIT, reactor)
        self._waiting.append((compiled, waiting, after))
        self._check()
        return waiting

    def _check(self) -> None:
        for item in list(self._waiting):
            compiled, waiting, after = item
            found = compiled.search(self.output, after)
            if found is not None:
                self._waiting.remove(item)
                if not waiting.called:
                    waiting.callback(found)

    @override
    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    @override
    def errReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    @override
    def processEnded(self, reason: Failure) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        for _, waiting, _ in self._waiting:
            if not waiting.called:
                waiting.errback(RuntimeError(self.output.decode("utf-8", "replace")))
        self._waiting.clear()
        self.ended.callback(self.exit_code or 0)

    def signal(self, name: str | int) -> None:
        """Send signal C{name} (C{"TERM"} ..., or a number) to the process."""
        assert self.transport is not None
        self.transport.signalProcess(name)


def write_config(case: TestCase, text: str) -> str:
    """Write C{text} as relaygate.toml in a new directory; its path."""
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "relaygate.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def smtp_config(backend: ScriptedBackend, extra: str = "", name: str = "gw.test") -> str:
    return (
        f'[server]\nname = "{name}"\ndrain_timeout = 20.0\n{extra}\n'
        '[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:0"\n'
        f'[[route]]\nmatch = "*"\nbackends = ["127.0.0.1:{backend.port}"]\n'
        "[smtp]\nxclient = false\n"
    )


def spawn_gateway(case: TestCase, path: str, logfile: str = "-") -> Gateway:
    """Run C{twistd -n relaygate -c path} logging to C{logfile}; killed, and waited for, at
    cleanup if it is still running."""
    gateway = Gateway()
    process = reactor.spawnProcess(
        gateway,
        TWISTD,
        [TWISTD, "-n", "--pidfile=", f"--logfile={logfile}", "relaygate", "-c", path],
        env=dict(os.environ),
        path=os.path.dirname(path),
    )

    async def stop() -> None:
        if not gateway.ended.called:
            process.signalProcess("KILL")
        await gateway.ended

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return gateway


async def start_gateway(case: TestCase, path: str) -> tuple[Gateway, int]:
    """Start relaygate on the file at C{path}; the process and its SMTP port."""
    gateway = spawn_gateway(case, path)
    found = await gateway.wait_for(rb"SwitchFactory starting on (\d+)")
    return gateway, int(found.group(1))


class Client:
    """An SMTP client that sends lines and reads replies, one line at a time."""

    def __init__(self, reader: ProbeReader) -> None:
        self.reader = reader

    @classmethod
    async def connect(cls, port: int) -> Client:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT)
        reader = await endpoint.connect(Factory.forProtocol(ProbeReader))
        assert isinstance(reader, ProbeReader)
        return cls(reader)

    async def reply(self) -> bytes:
        """One whole reply (its last line)."""
        while True:
            line = await self.reader.read_line()
            if line[3:4] != b"-":
                return line

    async def command(self, line: bytes) -> bytes:
        self.reader.send(line)
        return await self.reply()

    def send(self, data: bytes) -> None:
        assert self.reader.transport is not None
        self.reader.transport.write(data)


class DrainTests(TestCase):
    """SIGTERM lets a message being sent finish, refuses new connections, and exits."""

    timeout = 120

    async def test_half_sent_message_completes_then_exit(self) -> None:
        """A message half-sent at SIGTERM is delivered; idle sessions get 421 at once."""
        backend = await start_backend(self)
        gateway, port = await start_gateway(self, write_config(self, smtp_config(backend)))
        busy = await Client.connect(port)
        self.assertEqual(await busy.reply(), b"220 gw.test ESMTP")
        await busy.command(b"EHLO client.test")
        self.assertEqual(await busy.command(b"MAIL FROM:<a@example.net>"), b"250 2.1.0 Ok")
        self.assertEqual(await busy.command(b"RCPT TO:<b@example.org>"), b"250 2.1.5 Ok")
        self.assertTrue((await busy.command(b"DATA")).startswith(b"354"))
        busy.send(b"Subject: drain\r\n\r\nfirst half\r\n")
        idle = await Client.connect(port)
        await idle.reply()
        await idle.command(b"EHLO idle.test")

        mark = len(gateway.output)
        gateway.signal("TERM")
        await gateway.wait_for(rb"draining: stopped accepting, 2 session\(s\) open", mark)
        self.assertEqual(await idle.reply(), b"421 4.3.2 gw.test Service shutting down")
        with self.assertRaises(ConnectionRefusedError):
            await Client.connect(port)

        busy.send(b"second half\r\n.\r\n")
        self.assertEqual(await busy.reply(), b"250 2.0.0 Ok: queued")
        self.assertEqual(await busy.command(b"NOOP"), b"421 4.3.2 gw.test Service shutting down")
        self.assertEqual(await gateway.ended, 0)
        self.assertRegex(
            gateway.output.decode(), r"drain over after [0-9.]+s: 2 session\(s\) finished, 0 cut"
        )
        self.assertEqual(
            backend.messages, [b"Subject: drain\r\n\r\nfirst half\r\nsecond half\r\n"]
        )

    async def test_second_sigterm_stops_at_once(self) -> None:
        """A second SIGTERM cuts the drain short: the session is closed and the process ends."""
        backend = await start_backend(self)
        gateway, port = await start_gateway(self, write_config(self, smtp_config(backend)))
        client = await Client.connect(port)
        await client.reply()
        await client.command(b"EHLO c.test")
        self.assertEqual(await client.command(b"MAIL FROM:<a@example.net>"), b"250 2.1.0 Ok")
        mark = len(gateway.output)
        gateway.signal("TERM")
        await gateway.wait_for(rb"draining:", mark)
        gateway.signal("TERM")
        self.assertEqual(await client.reply(), b"421 4.3.2 gw.test Service shutting down")
        self.assertEqual(await gateway.ended, 0)
        self.assertIn(b"1 cut", gateway.output)


class ReloadTests(TestCase):
    """SIGHUP re-reads the file; sessions in progress keep their configuration."""

    timeout = 120

    async def test_reload_routes_new_sessions_and_keeps_old(self) -> None:
        """After a reload new sessions go to the new backend; an old one stays on its own."""
        first = await start_backend(self)
        second = await start_backend(self)
        path = write_config(self, smtp_config(first, name="gw.one"))
        gateway, port = await start_gateway(self, path)
        old = await Client.connect(port)
        self.assertEqual(await old.reply(), b"220 gw.one ESMTP")

        with open(path, "w") as f:
            f.write(smtp_config(second, name="gw.two"))
        mark = len(gateway.output)
        gateway.signal("HUP")
        await gateway.wait_for(rb"reloaded .* \(generation 2\)", mark)

        new = await Client.connect(port)
        self.assertEqual(await new.reply(), b"220 gw.two ESMTP")
        for client, recipient in ((old, b"old@example.org"), (new, b"new@example.org")):
            await client.command(b"EHLO c.test")
            await client.command(b"MAIL FROM:<a@example.net>")
            self.assertEqual(
                await client.command(b"RCPT TO:<" + recipient + b">"), b"250 2.1.5 Ok"
            )
            await client.command(b"DATA")
            self.assertEqual(await client.command(b"x\r\n."), b"250 2.0.0 Ok: queued")
            await client.command(b"QUIT")
        self.assertEqual(
            [c for c in first.commands if c.startswith(b"RCPT")], [b"RCPT TO:<old@example.org>"]
        )
        self.assertEqual(
            [c for c in second.commands if c.startswith(b"RCPT")], [b"RCPT TO:<new@example.org>"]
        )

        # An invalid file: logged in the FILE: key: what is wrong form; still serving.
        with open(path, "w") as f:
            f.write(smtp_config(second).replace("drain_timeout = 20.0", "drain_timeout = -1"))
        mark = len(gateway.output)
        gateway.signal("HUP")
        await gateway.wait_for(
            rb"reload failed, keeping the running configuration: .*relaygate.toml: "
            rb"server.drain_timeout: must be at least 0, got -1",
            mark,
        )
        after = await Client.connect(port)
        self.assertEqual(await after.reply(), b"220 gw.two ESMTP")
        await after.command(b"QUIT")
        gateway.signal("TERM")
        self.assertEqual(await gateway.ended, 0)


class MetricsTests(TestCase):
    """The metrics listener: a scrape, the sessions view and the kick on a real process."""

    timeout = 120

    async def test_scrape_sessions_and_kick(self) -> None:
        """/metrics counts the session; /sessions lists it; a kick closes it with 421 4.7.0."""
        backend = await start_backend(self)
        extra = '[metrics]\nlisten = "127.0.0.1:0"\n'
        config = smtp_config(backend).replace("[[listen]]", extra + "[[listen]]", 1)
        gateway, port = await start_gateway(self, write_config(self, config))
        found = await gateway.wait_for(rb"Site starting on (\d+)")
        base = f"http://127.0.0.1:{int(found.group(1))}"
        client = await Client.connect(port)
        await client.reply()

        response = await treq.get(base + "/sessions", persistent=False)
        sessions = json.loads(await response.content())
        self.assertEqual([(s["protocol"], s["state"]) for s in sessions], [("smtp", "greeting")])
        response = await treq.get(base + "/metrics", persistent=False)
        text = await response.text()
        self.assertIn('relaygate_sessions_total{protocol="smtp"} 1.0', text)
        self.assertIn('relaygate_sessions_active{protocol="smtp"} 1.0', text)

        response = await treq.post(
            base + "/sessions/close?id=" + sessions[0]["id"], persistent=False
        )
        self.assertEqual(json.loads(await response.content()), {"closed": 1})
        self.assertEqual(
            await client.reply(), b"421 4.7.0 gw.test Session closed by the administrator"
        )
        gateway.signal("TERM")
        self.assertEqual(await gateway.ended, 0)


class WorkersTests(TestCase):
    """With workers: one scrape for the group, sessions gathered, a reload refusing nobody."""

    timeout = 180

    async def test_scrape_reload_and_stop(self) -> None:
        """Counts from both workers reach one scrape; SIGHUP replaces the workers with no
        refused connection; SIGTERM ends the group."""
        backend = await start_backend(self)
        extra = 'workers = 2\n[metrics]\nlisten = "127.0.0.1:0"\n'
        path = write_config(self, smtp_config(backend, extra=extra))
        gateway = spawn_gateway(self, path)
        port = int((await gateway.wait_for(rb"smtp listener on 127\.0\.0\.1:(\d+)")).group(1))
        metrics_port = int((await gateway.wait_for(rb"Site starting on (\d+)")).group(1))
        base = f"http://127.0.0.1:{metrics_port}"
        await gateway.wait_for(rb"worker \d+ serving(.|\n)*worker \d+ serving")

        for number in range(4):
            client = await Client.connect(port)
            self.assertEqual(await client.reply(), b"220 gw.test ESMTP")
            await client.command(b"EHLO c.test")
            await client.command(b"MAIL FROM:<a@example.net>")
            await client.command(b"RCPT TO:<b@example.org>")
            await client.command(b"DATA")
            self.assertEqual(await client.command(b"n%d\r\n." % number), b"250 2.0.0 Ok: queued")
            await client.command(b"QUIT")
        held = await Client.connect(port)
        await held.reply()

        response = await treq.get(base + "/metrics", persistent=False)
        text = await response.text()
        self.assertIn('relaygate_transactions_total{outcome="delivered"} 4.0', text)
        self.assertIn('relaygate_sessions_total{protocol="smtp"} 5.0', text)
        self.assertIn('relaygate_sessions_active{protocol="smtp"} 1.0', text)
        response = await treq.get(base + "/sessions", persistent=False)
        self.assertEqual(len(json.loads(await response.content())), 1)

        mark = len(gateway.output)
        gateway.signal("HUP")
        await gateway.wait_for(rb"reloaded .*: 2 new worker\(s\)", mark)
        # The held session is idle: its old worker drains it with 421 at once.
        self.assertEqual(await held.reply(), b"421 4.3.2 gw.test Service shutting down")
        retired = gateway.wait_for(rb"drain over(.|\n)*drain over", mark)
        refused = 0
        for _ in range(200):  # bounded: connect through the whole switch-over
            try:
                client = await Client.connect(port)
            except ConnectionRefusedError:
                refused += 1
                continue
            self.assertEqual(await client.reply(), b"220 gw.test ESMTP")
            await client.command(b"QUIT")
            if retired.called:
                break
        await retired
        self.assertEqual(refused, 0)
        response = await treq.get(base + "/metrics", persistent=False)
        text = await response.text()
        self.assertIn('relaygate_config_reloads_total{result="success"} 1.0', text)
        self.assertIn('relaygate_transactions_total{outcome="delivered"} 4.0', text)

        gateway.signal("TERM")
        self.assertEqual(await gateway.ended, 0)


T = TypeVar("T")


def when_file(path: str, found: Callable[[bytes], T | None]) -> Deferred[T]:
    """Fires with C{found(content)} of the file at C{path} once that is not None (a missing
    file reads as empty): inotify reports each write, so the test waits on the write itself
    rather than on a time."""
    done: Deferred[T] = Deferred()
    watcher = inotify.INotify()
    watcher.startReading()

    def check(*_: object) -> None:
        try:
            with open(path, "rb") as f:
                result = found(f.read())
        except FileNotFoundError:
            result = found(b"")
        if not done.called and result is not None:
            watcher.loseConnection()
            done.callback(result)

    watcher.watch(
        FilePath(os.path.dirname(path)),
        mask=inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO,
        callbacks=[check],
    )
    check()
    return done


def file_lines(path: str, count: int) -> Deferred[bool]:
    """Fires once the file at C{path} holds C{count} complete lines."""
    return when_file(path, lambda data: True if data.count(b"\n") >= count else None)


def file_match(path: str, pattern: bytes) -> Deferred[re.Match[bytes]]:
    """Fires with the first match of C{pattern} in the file at C{path}, once there is one."""
    return when_file(path, re.compile(pattern).search).addTimeout(WAIT, reactor)


class TextLogFileTests(TestCase):
    """With workers and C{--logfile}: their lines are in twistd's file, rotated with it."""

    timeout = 120

    async def test_worker_lines_follow_rotation(self) -> None:
        """Lines before SIGUSR1 stay in the rotated file, lines after (the workers' last
        ones at the stop included) go to the new one, each tagged with its worker."""
        backend = await start_backend(self)
        path = write_config(self, smtp_config(backend, extra="workers = 2\n"))
        log = os.path.join(os.path.dirname(path), "twistd.log")
        gateway = spawn_gateway(self, path, log)
        found = await file_match(log, rb"smtp listener on 127\.0\.0\.1:(\d+)")
        port = int(found.group(1))
        await file_match(log, rb"worker \d+ serving(.|\n)*worker \d+ serving")

        async def one_session(in_file: str) -> None:
            client = await Client.connect(port)
            await client.reply()
            await client.command(b"QUIT")
            await file_match(in_file, rb"closed: quit\n")

        await one_session(log)
        gateway.signal(signal.SIGUSR1)
        await file_match(log + ".1", rb"closed: quit\n")
        await one_session(log)
        gateway.signal("TERM")
        self.assertEqual(await gateway.ended, 0)

        def lines(name: str) -> list[str]:
            with open(name) as f:
                # Without the time stamps.
                return [line.split(" ", 1)[1] for line in f.read().splitlines()]

        session = re.compile(r"\[relaygate\.access#info worker=[01]\] smtp session \S+ from ")
        before, after = lines(log + ".1"), lines(log)
        self.assertEqual(len([line for line in before if session.match(line)]), 1)
        self.assertEqual(len([line for line in after if session.match(line)]), 1)
        for worker in (0, 1):
            self.assertIn(
                f"[twisted.internet.base#info worker={worker}] Main loop terminated.", after
            )
        self.assertEqual(gateway.output, b"")


class AccessLogTests(TestCase):
    """The JSON access log with workers: each appends; SIGUSR1 to the parent reopens it."""

    timeout = 120

    async def test_workers_append_and_reopen(self) -> None:
        """Lines before the rotation stay in the moved file; lines after go to a new one."""
        backend = await start_backend(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        access = os.path.join(directory, "access.json")
        extra = f'workers = 2\n[log]\naccess = "{access}"\n'
        path = write_config(self, smtp_config(backend, extra=extra))
        gateway = spawn_gateway(self, path)
        port = int((await gateway.wait_for(rb"smtp listener on 127\.0\.0\.1:(\d+)")).group(1))
        await gateway.wait_for(rb"worker \d+ serving(.|\n)*worker \d+ serving")

        async def one_session(number: int) -> None:
            # The access event goes to the file only (not the text log): wait for its line.
            client = await Client.connect(port)
            await client.reply()
            await client.command(b"QUIT")
            await file_lines(access, 1)

        await one_session(1)
        os.rename(access, access + ".1")
        mark = len(gateway.output)
        gateway.signal(signal.SIGUSR1)
        await gateway.wait_for(rb"reopened the access log(.|\n)*reopened the access log", mark)
        await one_session(2)
        gateway.signal("TERM")
        self.assertEqual(await gateway.ended, 0)
        with open(access + ".1") as f:
            before = [json.loads(line) for line in f]
        with open(access) as f:
            after = [json.loads(line) for line in f]
        self.assertEqual([e["kind"] for e in before], ["smtp.session"])
        self.assertEqual([e["kind"] for e in after], ["smtp.session"])
        self.assertEqual(after[0]["end"], "quit")


class HealthTests(TestCase):
    """Health checks in a real process: a backend that never greets is taken out."""

    timeout = 120

    async def test_silent_backend_skipped_by_failover(self) -> None:
        """Once the probes find the first backend down, mail goes to the second at once."""
        silent = Factory.forProtocol(Protocol)
        silent_port: IListeningPort = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(silent_port.stopListening)
        dead = silent_port.getHost().port  # type: ignore[attr-defined]
        backend = await start_backend(self)
        config = (
            '[server]\nname = "gw.test"\n'
            "[health]\ninterval = 0.5\ntimeout = 0.3\nfall = 1\nrise = 1\n"
            '[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:0"\n'
            f'[[route]]\nmatch = "*"\nbackends = ["127.0.0.1:{dead}", '
            f'"127.0.0.1:{backend.port}"]\n'
            "[smtp]\nxclient = false\n"
        )
        gateway, port = await start_gateway(self, write_config(self, config))
        await gateway.wait_for(
            rb"backend 127\.0\.0\.1:%d is down after 1 failed probe\(s\): no answer within 0\.3s"
            % dead
        )
        client = await Client.connect(port)
        await client.reply()
        await client.command(b"EHLO c.test")
        await client.command(b"MAIL FROM:<a@example.net>")
        self.assertEqual(await client.command(b"RCPT TO:<b@example.org>"), b"250 2.1.5 Ok")
        await client.command(b"DATA")
        self.assertEqual(await client.command(b"x\r\n."), b"250 2.0.0 Ok: queued")
        await client.command(b"QUIT")
        self.assertEqual(backend.messages, [b"x\r\n"])
        self.assertNotIn(b"unavailable", gateway.output)
        gateway.signal("TERM")
        self.assertEqual(await gateway.ended, 0)

    async def test_refused_backend_marked_passively(self) -> None:
        """A backend that refuses is avoided for passive_down seconds and shown as down."""
        closed = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        refused = closed.getHost().port
        await closed.stopListening()
        backend = await start_backend(self)
        config = (
            '[server]\nname = "gw.test"\n'
            '[metrics]\nlisten = "127.0.0.1:0"\n'
            '[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:0"\n'
            f'[[route]]\nmatch = "*"\nbackends = ["127.0.0.1:{refused}", '
            f'"127.0.0.1:{backend.port}"]\n'
            "[smtp]\nxclient = false\n"
        )
        gateway, port = await start_gateway(self, write_config(self, config))
        found = await gateway.wait_for(rb"Site starting on (\d+)")
        base = f"http://127.0.0.1:{int(found.group(1))}"
        for number in range(2):
            client = await Client.connect(port)
            await client.reply()
            await client.command(b"EHLO c.test")
            await client.command(b"MAIL FROM:<a@example.net>")
            await client.command(b"RCPT TO:<b@example.org>")
            await client.command(b"DATA")
            self.assertEqual(await client.command(b"m%d\r\n." % number), b"250 2.0.0 Ok: queued")
            await client.command(b"QUIT")
        # The first message tried the refusing backend; the second went straight on.
        self.assertEqual(gateway.output.count(b"127.0.0.1:%d unavailable" % refused), 1)
        response = await treq.get(base + "/metrics", persistent=False)
        text = await response.text()
        self.assertIn(f'relaygate_backend_up{{backend="127.0.0.1:{refused}"}} 0.0', text)
        self.assertIn("relaygate_backend_connect_duration_seconds_count 2.0", text)
        self.assertIn('relaygate_recipients_total{result="accepted"} 2.0', text)
        gateway.signal("TERM")
        self.assertEqual(await gateway.ended, 0)


class FakePOP3(LineOnlyReceiver):
    """A POP3 backend that says +OK to everything (CAPA lists USER)."""

    delimiter = b"\r\n"

    @override
    def connectionMade(self) -> None:
        self.sendLine(b"+OK fake POP3 ready")

    @override
    def lineReceived(self, line: bytes) -> None:
        if line.upper().startswith(b"CAPA"):
            self.sendLine(b"+OK\r\nUSER\r\n.")
        elif line.upper().startswith(b"QUIT"):
            self.sendLine(b"+OK bye")
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self.sendLine(b"+OK")


class SplicedDrainTests(TestCase):
    """A spliced POP3 session runs on during the drain and is closed at drain_timeout."""

    timeout = 120

    async def test_spliced_session_cut_at_deadline(self) -> None:
        """The session keeps working after SIGTERM, then gets -ERR at drain_timeout."""
        backend_port = reactor.listenTCP(0, Factory.forProtocol(FakePOP3), interface="127.0.0.1")
        self.addCleanup(backend_port.stopListening)
        config = (
            '[server]\nname = "gw.test"\ndrain_timeout = 1.0\n'
            '[[listen]]\nprotocol = "pop3"\naddress = "127.0.0.1:0"\n'
            f'[[route]]\nprotocol = "pop3"\nmatch = "*"\n'
            f'backends = ["127.0.0.1:{backend_port.getHost().port}"]\n'
            '[pop3]\nauth = ["user"]\nxclient = false\n'
        )
        gateway, port = await start_gateway(self, write_config(self, config))
        client = await Client.connect(port)
        self.assertTrue((await client.reader.read_line()).startswith(b"+OK"))
        client.reader.send(b"USER alice@example.org")
        self.assertTrue((await client.reader.read_line()).startswith(b"+OK"))
        client.reader.send(b"PASS secret")
        self.assertTrue((await client.reader.read_line()).startswith(b"+OK"))
        mark = len(gateway.output)
        gateway.signal("TERM")
        await gateway.wait_for(rb"draining: stopped accepting, 1 session\(s\) open", mark)
        client.reader.send(b"NOOP")
        self.assertEqual(await client.reader.read_line(), b"+OK")
        self.assertEqual(await client.reader.read_line(), b"-ERR Service shutting down")
        self.assertEqual(await gateway.ended, 0)
        self.assertIn(b"0 session(s) finished, 1 cut", gateway.output)
