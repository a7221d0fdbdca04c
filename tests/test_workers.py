"""Tests for L{relaygate.workers}: N processes serving one listening socket."""

from __future__ import annotations

import os
import smtplib
import socket
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogLevel, capturedLogs, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from relaygate.addresses import HostPort
from relaygate.config.load import load
from relaygate.demo import DemoFactory
from relaygate.reactor import IParentReactor
from relaygate.workers import WorkerPool, bind_listener


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


class WorkerPoolTests(TestCase):
    """Two real worker processes relay mail; a dead one is restarted; stop ends them."""

    async def test_pool_relays_restarts_and_stops(self) -> None:
        """Mail goes through the workers before and after one is killed."""
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        store = self.mktemp()
        for sub in ("tmp", "new"):
            os.makedirs(os.path.join(store, sub))
        backend: IListeningPort = await TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1"
        ).listen(DemoFactory(store, "backend.test"))
        self.addCleanup(backend.stopListening)
        port = backend.getHost().port  # type: ignore[attr-defined]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[server]\nname = "gw.test"\nworkers = 2\n'
                '[[listen]]\nprotocol = "smtp"\naddress = "127.0.0.1:0"\n'
                f'[[route]]\nmatch = "*"\nbackends = ["127.0.0.1:{port}"]\n'
                "[smtp]\nxclient = false\n"
            )
        pool = WorkerPool(load(path), 2, cast(IParentReactor, reactor))
        pool.startService()
        stopped: list[bool] = []

        async def stop() -> None:
            if not stopped:
                await pool.stopService()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        [(_, address)] = pool.addresses()
        await DeferredList([pool.started[0], pool.started[1]], fireOnOneErrback=True)

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
        stopped.append(True)
        self.assertEqual(pool.workers, {})
        self.assertEqual(
            [process.reason.type if process.reason else None for process in processes],
            [ProcessDone, ProcessDone],
        )
