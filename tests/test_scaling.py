"""Scaling out: a real HAProxy balancing two ``twistd relaygate`` instances with PROXY v2.

Each instance is its own process started from the test; the backend (in the test's reactor)
records which instance relayed each message (by its EHLO name) and the client address it was
told in XCLIENT.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from typing_extensions import override

from tests.peers import peer_missing, start_backend

HAPROXY = shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CLIENT_ADDRESS = "127.0.0.2"

INSTANCE_CONFIG = """\
[server]
name = "{name}"
[[listen]]
protocol = "smtp"
address = "{address}:0"
proxy_protocol = true
[realip]
trusted = ["127.0.0.1/32"]
[[route]]
match = "*"
backends = ["127.0.0.1:{backend}"]
[smtp]
xclient = true
"""


class _Instance(ProcessProtocol):
    """A ``twistd -n relaygate`` child: learns its port from the log, and when it ends."""

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()

    @override
    def outReceived(self, data: bytes) -> None:
        self.output += data
        found = re.search(rb"Factory starting on (\d+)", self.output)
        if found and not self.listening.called:
            self.listening.callback(int(found.group(1)))

    @override
    def errReceived(self, data: bytes) -> None:
        self.output += data

    @override
    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode("utf-8", "replace")))
        self.ended.callback(None)


async def start_instance(case: TestCase, name: str, address: str, backend: int) -> int:
    """Start one relaygate process listening on C{address}; return its port."""
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    config = os.path.join(directory, "relaygate.toml")
    with open(config, "w") as f:
        f.write(INSTANCE_CONFIG.format(name=name, address=address, backend=backend))
    instance = _Instance()
    process = reactor.spawnProcess(
        instance,
        TWISTD,
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "relaygate", "-c", config],
        env=dict(os.environ),
        path=directory,
    )

    async def stop() -> None:
        if process.pid is not None:
            process.signalProcess(signal.SIGTERM)
        await instance.ended

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return await instance.listening


class _HAProxy(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    @override
    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def start_haproxy(case: TestCase, servers: list[tuple[str, int]]) -> int:
    """HAProxy on 127.0.0.1, round-robin over C{servers} with PROXY v2; return its port.

    The test binds the listening socket and hands it to HAProxy (C{bind fd@3}), so clients can
    connect at once: connections queue until HAProxy accepts them.
    """
    if HAPROXY is None:
        peer_missing("haproxy", "haproxy")
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port: int = sock.getsockname()[1]
    lines = "\n".join(
        f"    server gw{index} {host}:{server_port} send-proxy-v2"
        for index, (host, server_port) in enumerate(servers)
    )
    config = os.path.join(directory, "haproxy.cfg")
    with open(config, "w") as f:
        f.write(
            "global\n    maxconn 100\n"
            "defaults\n    mode tcp\n    timeout connect 10s\n"
            "    timeout client 60s\n    timeout server 60s\n"
            "frontend smtp\n    bind fd@3\n    default_backend gateways\n"
            f"backend gateways\n    balance roundrobin\n{lines}\n"
        )
    haproxy = _HAProxy()
    process = reactor.spawnProcess(
        haproxy,
        HAPROXY,
        [HAPROXY, "-db", "-f", config],
        env={},
        childFDs={0: "w", 1: "r", 2: "r", 3: sock.fileno()},
    )
    sock.close()

    async def stop() -> None:
        if process.pid is not None:
            process.signalProcess(signal.SIGTERM)
        await haproxy.ended

    case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return port


def send_from(port: int, recipient: str) -> dict[str, tuple[int, bytes]]:
    """One message from a client bound to 127.0.0.2 (run in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(CLIENT_ADDRESS, 0)) as client:
        return client.sendmail("a@example.net", [recipient], b"Subject: s\r\n\r\nbody\r\n")


class ScaleOutTests(TestCase):
    """Mail from one client goes through both instances with its real address."""

    async def test_haproxy_spreads_sessions_over_two_instances(self) -> None:
        """Two sessions through HAProxy reach the backend via both instances, ADDR=127.0.0.2."""
        backend = await start_backend(self, extensions=(b"PIPELINING", b"XCLIENT ADDR PORT"))
        first = await start_instance(self, "gw-a.test", "127.0.0.1", backend.port)
        second = await start_instance(self, "gw-b.test", "127.0.0.3", backend.port)
        front = start_haproxy(self, [("127.0.0.1", first), ("127.0.0.3", second)])

        for recipient in ("one@example.org", "two@example.org"):
            self.assertEqual(await deferToThread(send_from, front, recipient), {})

        relayed = []
        for session in backend.sessions:
            helo = next(c for c in session.commands if c.startswith(b"EHLO "))
            xclient = [c for c in session.commands if c.startswith(b"XCLIENT ")]
            relayed.append((helo, [c.split(b" PORT=")[0] for c in xclient]))
        self.assertEqual(
            sorted(relayed),
            [
                (b"EHLO gw-a.test", [b"XCLIENT ADDR=127.0.0.2"]),
                (b"EHLO gw-b.test", [b"XCLIENT ADDR=127.0.0.2"]),
            ],
        )
        self.assertEqual(len(backend.messages), 2)
