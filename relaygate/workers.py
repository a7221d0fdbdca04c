"""``[server] workers = N``: N processes share every listening socket, like nginx's workers.

The parent (the twistd process) binds each C{[[listen]]} socket once and starts N children with
those sockets as inherited file descriptors; each child adopts them with
L{IReactorSocket.adoptStreamPort} and runs the ordinary service tree, so the kernel spreads
connections over the children. The parent restarts a child that dies and stops them all on
SIGTERM. One twistd log holds everything, each line tagged with the worker's number: when twistd
writes its classic text log (the default), each child renders its own events as those lines and
the parent copies them into the log in batches (L{relaygate.textlog}), reading each pipe at most
once per L{LOG_PAUSE} while it has little in it; when twistd logs another way (C{--logger},
C{--syslog}), children send their events as JSON lines and the parent emits each one again,
with a C{worker} field. Answers to the parent's requests (the sessions view) and the "ready"
notice travel on a pipe of their own, the control channel.

Run a child by hand with ``python -m relaygate.workers -c FILE --fd FD:ADDRESS ...``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    eventFromJSON,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from relaygate.addresses import HostPort
from relaygate.collector import tune_collector
from relaygate.config.errors import ConfigError
from relaygate.config.load import load
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.dispatch import lean_dispatch
from relaygate.ops.build import metrics_service
from relaygate.ops.control import ParentControl, WorkerControl
from relaygate.ops.lifecycle import SignalHandlers
from relaygate.ops.metrics import Metrics, parent_metrics, worker_ended
from relaygate.reactor import IParentReactor, IWorkerReactor
from relaygate.textlog import LineCopier, LineWriter, TextLogService, write_all

RESTART_DELAY = 1.0
STOP_GRACE = 10.0
CONTROL_FD = 3
"""The child's descriptor for its control messages to the parent; listening sockets follow."""
LOG_PAUSE = 0.05
"""Seconds the parent leaves a worker's log pipe unread after a read that emptied it."""
LOG_PIPE_SIZE = 256 * 1024
"""Bytes a worker's log pipe holds (Linux's default is 64 KiB): only a worker logging more than
5 MB a second fills it during a pause."""
_READ_SIZE = 8192
"""What Twisted's process reader asks for in one read (C{fdesc.readFromFD})."""


def bind_listener(address: HostPort) -> socket.socket:
    """A listening, non-blocking socket on C{address}, ready to be shared with children."""
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if address.is_ipv6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address.host, address.port))
    sock.listen(511)
    sock.setblocking(False)
    return sock


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """An endpoint that listens on a socket the parent already bound (by file descriptor)."""

    def __init__(self, reactor: IReactorSocket, fd: int, family: socket.AddressFamily) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        """Adopt the descriptor for C{factory}; the reactor duplicates it, so ours is closed."""
        port: IListeningPort = self._reactor.adoptStreamPort(self._fd, self._family, factory)
        os.close(self._fd)
        return succeed(port)


class _WorkerProcess(ProcessProtocol):
    """The parent's view of one child: its log lines, its control messages and its end.

    @param copier: where the child's rendered log lines go (text mode), or None when the
        child writes JSON events to be emitted again here.
    """

    def __init__(
        self,
        pool: WorkerPool,
        number: int,
        copier: LineCopier | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._pool = pool
        self.number = number
        self._copier = copier
        self._clock = clock
        self._resume: IDelayedCall | None = None
        self._partial = b""
        self._control_partial = b""
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.pid = 0
        self.retiring = False
        """True once a reload replaced this worker: it drains and is not restarted."""

    @override
    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == CONTROL_FD:
            lines = (self._control_partial + data).split(b"\n")
            self._control_partial = lines.pop()
            for line in lines:
                self._pool.control_received(self.number, line)
        else:
            super().childDataReceived(childFD, data)

    @override
    def connectionMade(self) -> None:
        reader = self._log_reader()
        if reader is not None:
            try:
                fcntl.fcntl(reader.fileno(), fcntl.F_SETPIPE_SZ, LOG_PIPE_SIZE)
            except (AttributeError, OSError):  # not Linux, or above its pipe-max-size
                pass

    def _log_reader(self) -> Any:
        """The pipe reader of the child's log lines (text mode), if there is one."""
        if self._copier is None or self._clock is None:
            return None
        return getattr(self.transport, "pipes", {}).get(1)

    @override
    def outReceived(self, data: bytes) -> None:
        if self._copier is not None:
            self._copier.data_received(data)
            if len(data) < _READ_SIZE:
                self._pause_log()
            return
        # Children write one JSON event per line (jsonFileLogObserver uses the RS separator).
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._pool.relay_event(self.number, line)

    @override
    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            WorkerPool._log.error("worker {worker} stderr: {line}", worker=self.number, line=line)

    def _pause_log(self) -> None:
        # Read once more only after a pause: the lines the child writes meanwhile wait in the
        # pipe and come in one read, instead of waking this process for each one. A read that
        # filled the buffer left more to read, so it is not paused.
        reader = self._log_reader()
        if reader is None or self._resume is not None or self._clock is None:
            return
        reader.stopReading()
        self._resume = self._clock.callLater(LOG_PAUSE, self._resume_log)

    def _resume_log(self) -> None:
        self._resume = None
        reader = self._log_reader()
        if reader is not None and not reader.disconnected:
            reader.startReading()

    @override
    def childConnectionLost(self, childFD: int) -> None:
        # Whatever the child wrote is read before its pipe is lost, and processEnded comes
        # only after every pipe is: a last line without its end is not lost either.
        if childFD == 1 and self._copier is not None:
            self._copier.flush()
            if self._resume is not None and self._resume.active():
                self._resume.cancel()
            self._resume = None

    @override
    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        self._pool.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """Owns the listening sockets and keeps C{count} children running on them."""

    _log = Logger()

    def __init__(
        self,
        config: Config,
        count: int,
        reactor: IParentReactor,
        python: str = sys.executable,
        text_log: TextLogService | None = None,
    ) -> None:
        """@param text_log: twistd's text log, found when it starts: with one, the children
        render their lines and the parent copies them in; without, they send JSON events."""
        self._config = config
        self._text_log = text_log
        self._count = count
        self._reactor = reactor
        self._python = python
        self._sockets: list[tuple[ListenConfig, socket.socket]] = []
        self.workers: dict[int, tuple[_WorkerProcess, Any]] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self.started: dict[int, Deferred[int]] = {}
        self.retiring: list[tuple[_WorkerProcess, Any]] = []
        self.control = ParentControl(self._stdin_writers, reactor)
        self.metrics: Metrics | None = None
        self.metrics_dir: str | None = None

    @override
    def startService(self) -> None:
        super().startService()
        self._sockets = [(listen, bind_listener(listen.address)) for listen in self._config.listen]
        for listen, address in self.addresses():
            self._log.info(
                "{protocol} listener on {address}", protocol=listen.protocol, address=str(address)
            )
        for number in range(self._count):
            self._spawn(number)

    def signal_all(self, name: str) -> None:
        """Send signal C{name} (C{"HUP"}, C{"TERM"} ...) to every running worker."""
        for _, transport in [*self.workers.values(), *self.retiring]:
            try:
                transport.signalProcess(name)
            except ProcessExitedAlready:  # ended meanwhile; processEnded follows
                pass
            except Exception:
                # Anything else is a bug (a bad signal name, say): say so, and still
                # signal the other workers.
                self._log.failure("could not signal worker with {signal}", signal=name)

    def addresses(self) -> list[tuple[ListenConfig, HostPort]]:
        """Each listener with the address it is bound to (port 0 resolved)."""
        result = []
        for listen, sock in self._sockets:
            host, port = sock.getsockname()[:2]
            result.append((listen, HostPort(host, port)))
        return result

    def _stdin_writers(self) -> list[Callable[[bytes], None]]:
        return [transport.write for _, transport in self.workers.values()]

    def _spawn(self, number: int) -> None:
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", CONTROL_FD: "r"}
        text_log = self._text_log.text_log if self._text_log is not None else None
        args = [self._python, "-m", "relaygate.workers", "-c", self._config.path]
        args += ["--worker", str(number), "--control-fd", str(CONTROL_FD)]
        args += ["--log", "json" if text_log is None else "text"]
        for index, (listen, sock) in enumerate(self._sockets):
            fd = CONTROL_FD + 1 + index
            child_fds[fd] = sock.fileno()
            args += ["--fd", f"{fd}:{listen.address}"]
        copier = None if text_log is None else LineCopier(text_log.write)
        process = _WorkerProcess(self, number, copier, self._reactor)
        self.started.setdefault(number, Deferred())
        transport = self._reactor.spawnProcess(
            process, self._python, args, env=dict(os.environ), childFDs=child_fds
        )
        process.pid = transport.pid
        self.workers[number] = (process, transport)
        self._log.info("started worker {worker} (pid {pid})", worker=number, pid=transport.pid)

    def relay_event(self, number: int, line: bytes) -> None:
        """Re-emit a child's JSON log event in this process, tagged with the worker (when
        twistd's log is not its text log)."""
        text = line.strip(b"\x1e \r\n").decode("utf-8", "replace")
        if not text:
            return
        try:
            event = eventFromJSON(text)
        except ValueError:
            self._log.warn("worker {worker} wrote {line!r}", worker=number, line=text)
            return
        event["worker"] = number
        self._log.observer(event)

    def control_received(self, number: int, line: bytes) -> None:
        """A child's control message: an answer for L{ParentControl}, or its ready notice."""
        try:
            message = json.loads(line)
            kind = message["kind"]
        except (ValueError, KeyError, TypeError):
            self._log.warn("worker {worker} sent {line!r}", worker=number, line=line[:200])
            return
        if kind == "reply":
            self.control.reply_received(message)
        elif kind == "ready":
            ready = self.started.get(number)
            if ready is not None and not ready.called:
                ready.callback(message.get("pid", 0))

    def worker_ended(self, process: _WorkerProcess, reason: Failure) -> None:
        """A child exited: restart it unless the pool is stopping."""
        number = process.number
        if self.metrics_dir is not None and process.pid:
            worker_ended(process.pid, self.metrics_dir)
        if process.retiring:
            self.retiring = [item for item in self.retiring if item[0] is not process]
            return
        if self.workers.get(number, (None,))[0] is process:
            del self.workers[number]
        if not self.running:
            return
        self._log.error(
            "worker {worker} ended ({reason}); restarting in {delay}s",
            worker=number,
            reason=reason.getErrorMessage(),
            delay=RESTART_DELAY,
        )
        self.started.pop(number, None)
        self.started[number] = Deferred()
        self._restarts[number] = self._reactor.callLater(RESTART_DELAY, self._restart, number)

    def _restart(self, number: int) -> None:
        self._restarts.pop(number, None)
        if self.running:
            self._spawn(number)

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        for _, sock in self._sockets:
            sock.close()
        waits = [process.ended for process, _ in [*self.workers.values(), *self.retiring]]
        self.signal_all("TERM")
        # The workers drain first (up to drain_timeout); only then are they killed.
        grace = self._config.server.drain_timeout + STOP_GRACE
        killer = self._reactor.callLater(grace, self._kill_all)

        def all_ended(_: object) -> None:
            if killer.active():
                killer.cancel()
            if self.metrics_dir is not None:
                # This run's metric files; the next run starts from an empty directory.
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

        done: Deferred[Any] = DeferredList(waits)
        done.addCallback(all_ended)
        return done

    def _kill_all(self) -> None:
        self.signal_all("KILL")

    def reload(self) -> bool:
        """SIGHUP: re-read the file; start new workers with it, then drain the old ones.

        nginx's model: the new workers adopt the same listening sockets (and new ones for
        listeners added to the file) before the old ones stop accepting, so no connection is
        refused. An invalid file changes nothing.
        """
        try:
            config = load(self._config.path)
            kept = {str(listen.address): sock for listen, sock in self._sockets}
            sockets = []
            for listen in config.listen:
                address = str(listen.address)
                sock = kept.pop(address) if address in kept else bind_listener(listen.address)
                sockets.append((listen, sock))
        except (ConfigError, OSError) as e:
            self._log.error(
                "reload failed, keeping the running configuration: {error}", error=str(e)
            )
            if self.metrics is not None:
                self.metrics.config_reload("failure")
            return False
        old = list(self.workers.values())
        for process, _ in old:
            process.retiring = True
        self.retiring.extend(old)
        self._config, self._sockets, self._count = config, sockets, config.server.workers
        self.workers = {}
        self.started = {}
        for number in range(self._count):
            self._spawn(number)
        ready: Deferred[Any] = DeferredList(list(self.started.values()))
        # The old workers stop accepting only once the new ones listen.
        ready.addCallback(lambda _: self._retire(old, list(kept.values())))
        if self.metrics is not None:
            self.metrics.config_reload("success")
        self._log.info(
            "reloaded {path}: {count} new worker(s)", path=config.path, count=self._count
        )
        return True

    def _retire(self, old: list[tuple[_WorkerProcess, Any]], closed: list[socket.socket]) -> None:
        for sock in closed:
            sock.close()
        for process, transport in old:
            if process.reason is None:
                try:
                    transport.signalProcess("TERM")
                except Exception:  # ended meanwhile; processEnded follows
                    pass

    def pass_on(self, signum: int) -> None:
        """Send signal number C{signum} to every worker (Twisted's C{signalProcess} knows only
        a few signals by name)."""
        for _, transport in [*self.workers.values(), *self.retiring]:
            if transport.pid is not None:
                try:
                    os.kill(transport.pid, signum)
                except ProcessLookupError:  # ended meanwhile; processEnded follows
                    pass

    def terminate(self) -> None:
        """SIGTERM: stop (each worker drains); a second SIGTERM stops the workers at once."""
        if self.running:
            self._stop_reactor()
        else:
            self.signal_all("TERM")

    def interrupt(self) -> None:
        """SIGINT: the workers stop at once."""
        self.signal_all("INT")
        if self.running:
            self._stop_reactor()

    def _stop_reactor(self) -> None:
        core: Any = self._reactor
        core.stop()


def pool_service(config: Config, reactor: IParentReactor) -> MultiService:
    """The parent's service tree: the worker pool, the demo backend when configured, the
    metrics listener (for the whole group), and the signals (SIGTERM drains the workers,
    SIGHUP starts new workers on the new configuration)."""
    top = MultiService()
    if config.demo is not None:
        from relaygate.demo import demo_service

        demo_service(config.demo, config.server.name, reactor).setServiceParent(top)
    text_log = TextLogService()
    text_log.setServiceParent(top)
    pool = WorkerPool(config, config.server.workers, reactor, text_log=text_log)
    if config.metrics.listen is not None:
        pool.metrics_dir, pool.metrics, scrape = parent_metrics()
        service = metrics_service(config, reactor, scrape, pool.control)
        assert service is not None
        service.setServiceParent(top)
    pool.setServiceParent(top)
    SignalHandlers(
        reactor,
        pool.terminate,
        pool.interrupt,
        pool.reload,
        on_usr1=lambda: pool.pass_on(signal.SIGUSR1),
    ).setServiceParent(top)
    return top


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m relaygate.workers")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--fd", action="append", default=[], metavar="FD:ADDRESS")
    parser.add_argument("--worker", type=int, default=0, help="this worker's number")
    parser.add_argument(
        "--log",
        choices=["text", "json"],
        default="text",
        help="log events to stdout as twistd's text lines, or as JSON events",
    )
    parser.add_argument("--control-fd", type=int, help="where to send control messages")
    return parser.parse_args(argv)


def control_sender(fd: int | None) -> Callable[[dict[str, Any]], None]:
    """Sends a control message to the parent as one JSON line on C{fd} (nowhere without)."""

    def send(message: dict[str, Any]) -> None:
        if fd is not None:
            write_all(fd, json.dumps(message, default=repr).encode() + b"\n")

    return send


def main(argv: Sequence[str] | None = None) -> None:
    """A worker: adopt the inherited sockets and serve them until SIGTERM."""
    from twisted.internet import reactor as global_reactor

    from relaygate.service import build_service

    # It provides every interface relaygate uses (relaygate.reactor).
    reactor: IWorkerReactor = global_reactor  # type: ignore[assignment]
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # Debug events stay in the worker, as before: rendering and copying them would cost
    # work per event for lines that a busy gateway's log does not want.
    lines: ILogObserver = (
        LineWriter(sys.stdout.fileno(), args.worker)
        if args.log == "text"
        else jsonFileLogObserver(sys.stdout)
    )
    to_parent = FilteringLogObserver(lines, [LogLevelFilterPredicate(LogLevel.info)])
    send = control_sender(args.control_fd)
    globalLogBeginner.beginLoggingTo([to_parent], redirectStandardIO=False)
    # The parent reloads by starting new workers; SIGHUP's default action would end this one.
    # SIGUSR1 reopens the access log ([log] access installs that); otherwise it must not end
    # the worker either.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    config = load(args.config)
    adopted: dict[str, IStreamServerEndpoint] = {}
    for item in args.fd:
        fd_text, _, address = item.partition(":")
        fd = int(fd_text)
        family = socket.AF_INET6 if address.startswith("[") else socket.AF_INET
        adopted[address] = AdoptedEndpoint(reactor, fd, family)
    # SIGTERM from the parent drains this worker, then stops it; the parent serves metrics.
    service = build_service(
        config,
        reactor,
        adopted=adopted,
        with_demo=False,
        stop=reactor.stop,
        reloadable=False,
        serve_metrics=False,
    )
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    # Requests for the sessions view come from the parent on stdin (relaygate.ops.control).
    # (mypy reads the Windows StandardIO, which has no stdin/stdout arguments.)
    control = WorkerControl(service.sessions, send, service.terminate)
    StandardIO(  # type: ignore[call-arg]
        control,
        stdin=0,
        stdout=os.open(os.devnull, os.O_WRONLY),
    )
    # The reactor closes stdin as it stops: that is no sign of the parent's death.
    reactor.addSystemEventTrigger("before", "shutdown", control.stopping)
    Logger(namespace="relaygate.workers").info("worker {pid} serving", pid=os.getpid())
    send({"kind": "ready", "pid": os.getpid()})
    lean_dispatch(reactor)
    tune_collector(reactor)
    # The reactors' run() takes this keyword; IReactorCore does not name it.
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
