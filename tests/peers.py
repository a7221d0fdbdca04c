"""Real peers for the SMTP relay's integration tests, on 127.0.0.1 and ports chosen at run time.

- L{start_smtp_sink}: Postfix's C{smtp-sink} as a backend, dumping each message to a file;
- L{start_backend}: a scriptable backend SMTP server in the test's reactor, which records every
  byte and command it receives and can answer any code at any step or drop the connection;
- L{start_relay}: relaygate's own service tree (C{config.parse} + C{build_service}) on the real
  reactor, listening on port 0, with every connection it makes or accepts tracked so the test
  ends only when all of them are closed;
- clients: L{run_swaks}, L{smtplib_client} (for use in L{deferToThread}) and L{connect_raw},
  a Twisted client that writes exactly the bytes it is given;
- L{start_garbage_server}: a TCP server that answers anything with non-HTTP bytes.

Nothing here sleeps: tests wait for a peer's reply, a Deferred fired by a peer, or a line a
process printed.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import smtplib
import socket
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from twisted.application.service import MultiService
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocol
from twisted.internet.protocol import (
    ClientFactory,
    Factory,
    ProcessProtocol,
    Protocol,
    connectionDone,
)
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, SkipTest, TestCase
from typing_extensions import override
from zope.interface import alsoProvides, providedBy

from relaygate.addresses import HostPort
from relaygate.config.load import parse
from relaygate.config.model import Config
from relaygate.reactor import IGatewayReactor
from relaygate.service import build_service
from relaygate.smtp.factory import SMTPFrontFactory

reactor: Any = _global_reactor

SMTP_SINK = shutil.which("smtp-sink", path=os.environ.get("PATH", "") + ":/usr/sbin")
SWAKS = shutil.which("swaks")


def in_ci() -> bool:
    """True when the C{CI} environment variable is set (CI runs with C{CI=true})."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the test for C{reason}, or fail it when L{in_ci}: CI must run every test.

    Every test that needs a real peer (smtp-sink, swaks, haproxy ...) comes through here, so
    a CI machine without one fails the run instead of passing with the test skipped.
    """
    if in_ci():
        raise FailTest(f"{reason}; CI is set, so a missing peer fails the test")
    raise SkipTest(reason)


def peer_missing(program: str, package: str) -> NoReturn:
    """L{skip_unless_ci} for a peer that is not installed, naming its Debian package."""
    skip_unless_ci(f"{program} is not installed (Debian package {package})")


# How long a test may wait for its connections to close before it fails (a timeout, not a sleep).
_CLOSE_TIMEOUT = 10.0


def reserve_port() -> socket.socket:
    """A socket bound to a free 127.0.0.1 port, not listening.

    While it stays open no other bind to port 0 gets this port, and connections to it are
    refused: it stands for a dead backend, or holds the port for a peer that can't listen on
    port 0 (smtp-sink), which may bind it too since both set C{SO_REUSEADDR}.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def dead_port(case: TestCase) -> int:
    """A 127.0.0.1 port where nothing listens for the whole test (connections are refused)."""
    sock = reserve_port()
    case.addCleanup(sock.close)
    port: int = sock.getsockname()[1]
    return port


# -- Postfix's smtp-sink ---------------------------------------------------------------------


@dataclass
class SinkMessage:
    """One message smtp-sink dumped: its envelope (as the sink saw it) and its content.

    C{content} is the message as smtp-sink stores it: lines end in LF, dots unstuffed.
    """

    helo: bytes
    mail: bytes
    rcpts: list[bytes]
    content: bytes


class _SinkProcess(ProcessProtocol):
    """Reads smtp-sink's verbose log (stderr) line by line and tells waiters what it saw."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended: Deferred[None] = Deferred()
        self._partial = b""
        self._waiters: list[tuple[Callable[[list[str]], bool], Deferred[None]]] = []

    def wait_until(self, condition: Callable[[list[str]], bool]) -> Deferred[None]:
        """A Deferred that fires once C{condition(lines)} holds (at once if it already does)."""
        waiter: Deferred[None] = Deferred()
        if condition(self.lines):
            waiter.callback(None)
        elif self.ended.called:
            waiter.errback(RuntimeError("smtp-sink ended: " + "\n".join(self.lines)))
        else:
            self._waiters.append((condition, waiter))
        return waiter

    @override
    def errReceived(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            self.lines.append(line.decode("utf-8", "replace").removeprefix("smtp-sink: "))
        waiting, self._waiters = self._waiters, []
        for condition, waiter in waiting:
            if condition(self.lines):
                waiter.callback(None)
            else:
                self._waiters.append((condition, waiter))

    @override
    def processEnded(self, reason: Failure) -> None:
        waiting, self._waiters = self._waiters, []
        for _, waiter in waiting:
            waiter.errback(RuntimeError("smtp-sink ended: " + "\n".join(self.lines)))
        self.ended.callback(None)


@dataclass
class SmtpSink:
    """A running smtp-sink: its port, dump directory and verbose log."""

    port: int
    directory: str
    process: _SinkProcess
    probes: int = 0

    @property
    def log(self) -> list[str]:
        """smtp-sink's verbose log so far: ``connect (...)``, each command, ``disconnect``."""
        return self.process.lines

    def commands(self) -> list[str]:
        """The SMTP commands the sink received so far, in order (end of data shows as ``.``)."""
        return [
            line
            for line in self.log
            if line.split(" ", 1)[0].upper()
            in {"EHLO", "HELO", "MAIL", "RCPT", "DATA", ".", "RSET", "NOOP", "QUIT", "XCLIENT"}
        ]

    async def sessions_ended(self, count: int) -> None:
        """Wait until C{count} client sessions have ended and the sink has cleaned up after them.

        smtp-sink logs ``disconnect`` just before it deletes an unfinished transaction's dump
        file. It does one thing at a time, so once it greets a new connection (a probe, which
        this counts apart) that file is gone and L{messages} shows finished messages only.
        """
        await self._disconnects(count + self.probes)
        probe = RawClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoint.connect(Factory.forProtocol(lambda: probe))
        self.probes += 1
        greeted = probe.wait_replies(1)
        await greeted.addTimeout(_CLOSE_TIMEOUT, reactor)
        assert probe.transport is not None
        probe.transport.loseConnection()
        await probe.closed
        await self._disconnects(count + self.probes)

    def _disconnects(self, count: int) -> Deferred[None]:
        """Fires once the sink has logged C{count} ended sessions (fails after a timeout)."""
        ended = self.process.wait_until(lambda lines: lines.count("disconnect") >= count)
        return ended.addTimeout(_CLOSE_TIMEOUT, reactor)

    def messages(self) -> list[SinkMessage]:
        """Every message the sink has finished receiving (files of unfinished ones are removed)."""
        paths = [os.path.join(self.directory, name) for name in os.listdir(self.directory)]
        paths.sort(key=lambda path: os.stat(path).st_mtime_ns)
        result = []
        for path in paths:
            with open(path, "rb") as f:
                result.append(_parse_dump(f.read()))
        return result


def _parse_dump(data: bytes) -> SinkMessage:
    """Split one smtp-sink dump: its X-* records, its three-line Received:, the message, LF."""
    headers, sep, rest = data.partition(b"\nReceived: ")
    assert sep, data[:200]
    _received, _by, rest = rest.split(b"\n", 2)
    _date, content = rest.split(b"\n", 1)
    fields: dict[bytes, list[bytes]] = {}
    for line in headers.split(b"\n"):
        name, _, value = line.partition(b": ")
        fields.setdefault(name, []).append(value)
    assert content.endswith(b"\n"), content[-20:]
    return SinkMessage(
        helo=fields.get(b"X-Helo-Args", [b""])[0],
        mail=fields[b"X-Mail-Args"][0],
        rcpts=fields.get(b"X-Rcpt-Args", []),
        content=content[:-1],
    )


async def start_smtp_sink(case: TestCase, *options: str) -> SmtpSink:
    """Start C{smtp-sink} on a free 127.0.0.1 port with extra C{options}; stopped at cleanup.

    It runs with C{-v -v}: that log is how the test knows the sink is listening (the
    ``chroot ... user`` line comes right after it opened its socket) and what it received.
    Options worth knowing: C{-f CMD,...}/C{-r CMD,...} reject commands (``.`` is end of data)
    with C{-B}/C{-b}'s reply; C{-q CMD} disconnects; C{-p} hides PIPELINING; C{-C} hides XCLIENT.
    """
    if SMTP_SINK is None:
        peer_missing("smtp-sink", "postfix")
    if os.geteuid() != 0:
        # Without -u (root only) smtp-sink logs nothing once it listens: no readiness signal.
        skip_unless_ci("smtp-sink tests run as root (smtp-sink -u nobody)")
    nobody = pwd.getpwnam("nobody")
    # Not under case.mktemp(): its parents are private to root, and the sink runs as nobody.
    directory = tempfile.mkdtemp(prefix="relaygate-sink-")
    case.addCleanup(shutil.rmtree, directory, True)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    holder = reserve_port()
    port: int = holder.getsockname()[1]
    process = _SinkProcess()
    args = ["smtp-sink", "-v", "-v", "-u", "nobody", "-d", directory + "/msg.", *options]
    args += [f"127.0.0.1:{port}", "64"]
    transport = reactor.spawnProcess(process, SMTP_SINK, args, env={}, childFDs={0: "w", 2: "r"})

    async def stop() -> None:
        if not process.ended.called:
            transport.signalProcess("TERM")
        await process.ended

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    try:
        await process.wait_until(lambda lines: any(" user nobody" in line for line in lines))
    finally:
        holder.close()
    return SmtpSink(port=port, directory=directory, process=process)


# -- a scriptable backend --------------------------------------------------------------------

Respond = Callable[[bytes], "bytes | None"]


@dataclass
class BackendSession:
    """What one connection to a L{ScriptedBackend} carried."""

    received: bytearray = field(default_factory=bytearray)
    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    closed: Deferred[None] = field(default_factory=Deferred)


class _BackendProtocol(Protocol):
    """The server side of one backend connection (see L{ScriptedBackend})."""

    def __init__(self, backend: ScriptedBackend) -> None:
        self.backend = backend
        self.session = BackendSession()
        self._buffer = bytearray()
        self._in_data = False
        self._dropped = False

    @override
    def connectionMade(self) -> None:
        self.backend.sessions.append(self.session)
        self.backend._open.add(self)
        self._reply(b"CONNECT", b"220 backend.test ESMTP")

    def _reply(self, step: bytes, default: bytes) -> None:
        assert self.transport is not None
        answer = self.backend.respond(step) if self.backend.respond else None
        self.transport.write((default if answer is None else answer) + b"\r\n")

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return
        self.session.received += data
        self.backend._received_more()
        old = len(self._buffer)
        self._buffer += data
        while not self._dropped:
            if self._in_data:
                if not self._scan_body(old):
                    return
            else:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                self._command(line)
            old = 0

    def _scan_body(self, old: int) -> bool:
        """Look for end-of-data from about offset C{old}; True when a message was completed."""
        drop = self.backend.drop_after
        if drop is not None and len(self._buffer) >= drop:
            self._dropped = True
            transport: Any = self.transport
            transport.abortConnection()
            return False
        if self._buffer.startswith(b".\r\n"):
            end, body_end = 0, 0
        else:
            at = self._buffer.find(b"\r\n.\r\n", max(0, old - 4))
            if at < 0:
                return False
            end, body_end = at + 2, at + 2
        message = bytes(self._buffer[:body_end])
        del self._buffer[: end + 3]
        self._in_data = False
        self.session.messages.append(message)
        self._reply(b".", b"250 2.0.0 Ok: queued")
        self.backend._message_done(message)
        return True

    def _command(self, line: bytes) -> None:
        self.session.commands.append(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            lines = [b"backend.test", *self.backend.extensions]
            text = b"\r\n".join(
                b"250" + (b" " if i == len(lines) - 1 else b"-") + item
                for i, item in enumerate(lines)
            )
            self._reply(line, text)
        elif verb == b"HELO":
            self._reply(line, b"250 backend.test")
        elif verb == b"XCLIENT":
            self._reply(line, b"220 backend.test ESMTP")
        elif verb == b"MAIL":
            self._reply(line, b"250 2.1.0 Ok")
        elif verb == b"RCPT":
            self._reply(line, b"250 2.1.5 Ok")
        elif verb == b"DATA":
            answer = self.backend.respond(line) if self.backend.respond else None
            assert self.transport is not None
            reply = b"354 End data with <CR><LF>.<CR><LF>" if answer is None else answer
            self.transport.write(reply + b"\r\n")
            self._in_data = reply.startswith(b"354")
        elif verb in (b"RSET", b"NOOP"):
            self._reply(line, b"250 2.0.0 Ok")
        elif verb == b"QUIT":
            self._reply(line, b"221 2.0.0 Bye")
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self._reply(line, b"502 5.5.2 Error: command not recognized")

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.backend._open.discard(self)
        self.session.closed.callback(None)


class ScriptedBackend(Factory):
    """A backend SMTP server in the test's reactor that records everything it receives.

    C{respond(step)} may replace any reply: C{step} is the command line, C{b"CONNECT"} for the
    greeting, C{b"."} for end of data; return C{None} for the default. C{extensions} are the EHLO
    keywords it advertises. With C{drop_after} set, it aborts the connection once that many
    body bytes arrived (before it has seen the end of the message).
    """

    def __init__(
        self,
        extensions: list[bytes],
        respond: Respond | None,
        drop_after: int | None,
    ) -> None:
        self.extensions = extensions
        self.respond = respond
        self.drop_after = drop_after
        self.sessions: list[BackendSession] = []
        self.port = 0
        self._open: set[_BackendProtocol] = set()
        self._message_waiters: list[Deferred[bytes]] = []
        self._bytes_waiters: list[tuple[bytes, Deferred[None]]] = []

    @override
    def buildProtocol(self, addr: Any) -> _BackendProtocol:
        return _BackendProtocol(self)

    @property
    def messages(self) -> list[bytes]:
        """Every complete message body received, as on the wire (dot-stuffed, CRLF)."""
        return [message for session in self.sessions for message in session.messages]

    @property
    def commands(self) -> list[bytes]:
        """Every command line received, over all connections, in order."""
        return [line for session in self.sessions for line in session.commands]

    def next_message(self) -> Deferred[bytes]:
        """Fires with the next message this backend completes."""
        waiter: Deferred[bytes] = Deferred()
        self._message_waiters.append(waiter)
        return waiter

    def bytes_arrived(self, data: bytes) -> Deferred[None]:
        """Fires once one connection has received C{data} (anywhere in what it carried)."""
        waiter: Deferred[None] = Deferred()
        self._bytes_waiters.append((data, waiter))
        self._received_more()
        return waiter

    def _received_more(self) -> None:
        waiting = []
        for data, waiter in self._bytes_waiters:
            if any(data in session.received for session in self.sessions):
                waiter.callback(None)
            else:
                waiting.append((data, waiter))
        self._bytes_waiters = waiting

    def _message_done(self, message: bytes) -> None:
        waiters, self._message_waiters = self._message_waiters, []
        for waiter in waiters:
            waiter.callback(message)

    def all_closed(self) -> Deferred[Any]:
        """Fires once every connection made so far has closed."""
        return DeferredList([session.closed for session in self.sessions])


async def start_backend(
    case: TestCase,
    extensions: tuple[bytes, ...] = (b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES"),
    respond: Respond | None = None,
    drop_after: int | None = None,
) -> ScriptedBackend:
    """Listen on 127.0.0.1:0 with a L{ScriptedBackend}; closed (and waited for) at cleanup."""
    backend = ScriptedBackend(list(extensions), respond, drop_after)
    port: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        backend
    )
    backend.port = port.getHost().port  # type: ignore[attr-defined]

    async def stop() -> None:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        for protocol in list(backend._open):
            assert protocol.transport is not None
            protocol.transport.loseConnection()
        closing = backend.all_closed()
        closing.addTimeout(_CLOSE_TIMEOUT, reactor)
        await closing

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return backend


def unstuff(wire: bytes) -> bytes:
    """The message a dot-stuffed body stands for (RFC 5321 section 4.5.2)."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def stuff(message: bytes) -> bytes:
    """Dot-stuff C{message} (CRLF lines) as a client puts it on the wire."""
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


# -- a garbage "auth service" ----------------------------------------------------------------


class _Garbage(Protocol):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.answer)
        self.transport.loseConnection()


async def start_garbage_server(case: TestCase, answer: bytes) -> int:
    """A TCP server on 127.0.0.1:0 that answers any request with C{answer} and closes."""
    tracker = _Tracker()
    factory = _TrackingFactory(Factory.forProtocol(lambda: _Garbage(answer)), tracker)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

    async def stop() -> None:
        await port.stopListening()
        await tracker.quiet()

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    number: int = port.getHost().port
    return number


# -- relaygate itself ------------------------------------------------------------------------


class _Tracker:
    """Counts open connections and tells waiters when none is left."""

    def __init__(self) -> None:
        self.open: list[IProtocol] = []
        self._waiters: list[Deferred[None]] = []

    def track(self, protocol: IProtocol) -> None:
        self.open.append(protocol)
        original = protocol.connectionLost

        def lost(reason: Failure) -> None:
            try:
                original(reason)
            finally:
                self.open.remove(protocol)
                if not self.open:
                    waiters, self._waiters = self._waiters, []
                    for waiter in waiters:
                        waiter.callback(None)

        # The transport has already closed its socket when it calls connectionLost: once every
        # tracked protocol got here, nothing of ours is left in the reactor.
        protocol.connectionLost = lost  # type: ignore[method-assign]

    async def quiet(self) -> None:
        """Wait until no tracked connection is open; after a timeout, abort the rest and fail."""
        if not self.open:
            return
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        waiter.addTimeout(_CLOSE_TIMEOUT, reactor)
        try:
            await waiter
        except Exception as e:
            left = [repr(p) for p in self.open]
            for protocol in list(self.open):
                transport: Any = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.abortConnection()
            raise AssertionError(f"connections still open at the end of the test: {left}") from e


class _TrackingFactory(ClientFactory):
    """Wraps a factory given to the reactor so each protocol it builds is tracked."""

    def __init__(self, inner: Factory, tracker: _Tracker) -> None:
        self._inner = inner
        self._tracker = tracker

    @override
    def doStart(self) -> None:
        self._inner.doStart()

    @override
    def doStop(self) -> None:
        self._inner.doStop()

    @override
    def startedConnecting(self, connector: Any) -> None:
        if isinstance(self._inner, ClientFactory):
            self._inner.startedConnecting(connector)

    @override
    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if isinstance(self._inner, ClientFactory):
            self._inner.clientConnectionFailed(connector, reason)

    @override
    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        if isinstance(self._inner, ClientFactory):
            self._inner.clientConnectionLost(connector, reason)

    @override
    def buildProtocol(self, addr: Any) -> Protocol | None:
        protocol = self._inner.buildProtocol(addr)
        if protocol is not None:
            self._tracker.track(protocol)
        built: Protocol | None = protocol  # type: ignore[assignment]
        return built


class _TrackingReactor:
    """The real reactor, except that TCP connections made or accepted through it are tracked.

    relaygate gets this as its injected reactor, so the test can wait until every backend,
    auth service and client connection the gateway holds has closed before trial checks that
    the reactor is clean. It provides every interface the real reactor provides.
    """

    def __init__(self, real: Any, tracker: _Tracker) -> None:
        self._real = real
        self._tracker = tracker
        self.listening: list[tuple[Factory, IListeningPort]] = []
        alsoProvides(self, *list(providedBy(real)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def connectTCP(  # noqa: N802 - IReactorTCP's name
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,  # noqa: N803
    ) -> Any:
        wrapped = _TrackingFactory(factory, self._tracker)
        return self._real.connectTCP(host, port, wrapped, timeout, bindAddress)

    def listenTCP(  # noqa: N802 - IReactorTCP's name
        self, port: int, factory: Factory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        listening: IListeningPort = self._real.listenTCP(
            port, _TrackingFactory(factory, self._tracker), backlog, interface
        )
        self.listening.append((factory, listening))
        return listening


@dataclass
class Relay:
    """relaygate running in the test: its config, its SMTP port, its service tree."""

    config: Config
    port: int
    service: MultiService
    reactor: _TrackingReactor


def relay_config(case: TestCase, toml_text: str) -> Config:
    """Parse C{toml_text} as if read from a file in the test's temp dir (also written there)."""
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "relaygate.toml")
    with open(path, "w") as f:
        f.write(toml_text)
    return parse(tomllib.loads(toml_text), path)


async def start_relay(case: TestCase, config: Config | str) -> Relay:
    """Run relaygate's service tree for C{config} (a L{Config} or TOML text) on the real reactor.

    Every C{[[listen]]} address gets port 0; the result carries the first SMTP listener's port.
    At cleanup the service stops and the test waits until all its connections have closed.
    """
    if isinstance(config, str):
        config = relay_config(case, config)
    config = dataclasses.replace(
        config,
        listen=tuple(
            dataclasses.replace(item, address=HostPort(item.address.host, 0))
            for item in config.listen
        ),
    )
    tracker = _Tracker()
    tracking = _TrackingReactor(reactor, tracker)
    service = build_service(config, cast(IGatewayReactor, tracking))
    service.startService()

    async def stop() -> None:
        await service.stopService()
        await tracker.quiet()

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    ports = [
        port.getHost().port  # type: ignore[attr-defined]
        for factory, port in tracking.listening
        # Implicit TLS, PROXY and limits listeners wrap the front's factory in theirs.
        if isinstance(_front_factory(factory), SMTPFrontFactory)
    ]
    return Relay(config=config, port=ports[0], service=service, reactor=tracking)


def _front_factory(factory: object) -> object:
    """The front's factory under any wrapping ones (TLSMemoryBIOFactory, PROXY, limits)."""
    while True:
        inner = getattr(factory, "wrappedFactory", None) or getattr(
            factory, "wrapped_factory", None
        )
        if inner is None:
            return factory
        factory = inner


# -- clients -----------------------------------------------------------------------------------


@dataclass
class SwaksResult:
    """What a swaks run printed and how it exited."""

    out: str
    err: str
    code: int

    def replies(self) -> list[str]:
        """The server's reply lines from the transcript (C{<-} and C{<**} lines), in order."""
        lines = []
        for line in self.out.splitlines():
            if line.startswith(("<-  ", "<** ")):
                lines.append(line[4:])
        return lines

    def final_replies(self) -> list[str]:
        """Only the last line of each reply (multi-line EHLO replies count once)."""
        return [line for line in self.replies() if line[3:4] != "-"]


async def run_swaks(*args: str) -> SwaksResult:
    """Run swaks with C{args} (no config file, no TLS) and collect its transcript."""
    if SWAKS is None:
        peer_missing("swaks", "swaks")
    out, err, code = await getProcessOutputAndValue(
        SWAKS, list(args), env={"PATH": os.environ.get("PATH", "")}
    )
    return SwaksResult(out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code)


def smtplib_client(port: int, source: str | None = None) -> smtplib.SMTP:
    """A connected L{smtplib.SMTP} (call from a thread: it blocks)."""
    return smtplib.SMTP(
        "127.0.0.1",
        port,
        local_hostname="client.test",
        timeout=30,
        source_address=(source, 0) if source else None,
    )


class RawClient(Protocol):
    """A client that writes exactly what the test gives it and collects the replies."""

    def __init__(self) -> None:
        self.data = b""
        self.replies: list[bytes] = []
        self.closed: Deferred[None] = Deferred()
        self._partial: list[bytes] = []
        self._buffer = b""
        self._waiters: list[tuple[int, Deferred[list[bytes]]]] = []

    def send(self, data: bytes) -> None:
        """Write C{data} in one write."""
        assert self.transport is not None
        self.transport.write(data)

    def wait_replies(self, count: int) -> Deferred[list[bytes]]:
        """Fires with the first C{count} replies once they have all arrived (multi-line joined).

        Fails if the connection closes before.
        """
        waiter: Deferred[list[bytes]] = Deferred()
        self._waiters.append((count, waiter))
        self._check()
        return waiter

    async def exchange(self, data: bytes, count: int = 1) -> list[bytes]:
        """Send C{data} and return the C{count} replies that follow the ones already read."""
        start = len(self.replies)
        self.send(data)
        replies = await self.wait_replies(start + count)
        return replies[start:]

    @override
    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\r\n")
        for line in lines:
            self._partial.append(line)
            if line[3:4] != b"-":
                self.replies.append(b"\n".join(self._partial))
                self._partial = []
        self._check()

    def _check(self) -> None:
        waiting, self._waiters = self._waiters, []
        for count, waiter in waiting:
            if len(self.replies) >= count:
                waiter.callback(self.replies[:count])
            elif self.closed.called:
                waiter.errback(AssertionError(f"closed after replies {self.replies!r}"))
            else:
                self._waiters.append((count, waiter))

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)
        self._check()


async def connect_raw(case: TestCase, port: int, source: str = "127.0.0.1") -> RawClient:
    """Connect a L{RawClient} from C{source} and wait for the greeting; closed at cleanup."""
    client = RawClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    factory = Factory.forProtocol(lambda: client)
    await endpoint.connect(factory)

    def close() -> Deferred[None]:
        if not client.closed.called and client.transport is not None:
            client.transport.loseConnection()
        return client.closed

    case.addCleanup(close)
    await client.wait_replies(1)
    return client
