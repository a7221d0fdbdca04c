"""A real ``twistd -n relaygate`` child for the soak and fuzz harnesses, measured through /proc.

The harnesses test relaygate as a black box, the way production runs it: a config file, a
``twistd`` process, its log file. This module starts that process inside the harness's
reactor, waits until each of its listeners accepts, and reads what the harnesses judge it by:
open descriptors and RSS (``/proc/PID``), and the lines of its log that show a bug (a
traceback, an unhandled error in a Deferred).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from loopback import memory_kib
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

DEFAULT_TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# What in a relaygate log means a bug: Twisted's renderings of a failure nobody handled, and
# any traceback (log.failure events are rendered with one).
BAD_LOG_MARKERS = (
    "Traceback (most recent call last)",
    "Unhandled error in Deferred",
    "Unhandled Error",
)


class _Child(ProcessProtocol):
    """Collects the child's stdout/stderr (twistd writes its log to a file) and its end."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class Gateway:
    """One running relaygate: its pid, log file and the ports it listens on."""

    def __init__(self, reactor: Any, directory: str, config_text: str, twistd: str) -> None:
        self._reactor = reactor
        self.directory = directory
        self.config = os.path.join(directory, "relaygate.toml")
        self.log_path = os.path.join(directory, "relaygate.log")
        with open(self.config, "w") as f:
            f.write(config_text)
        self._child = _Child()
        argv = [twistd, "-n", "--pidfile=", "--logfile", self.log_path, "relaygate"]
        self._process = reactor.spawnProcess(
            self._child,
            twistd,
            [*argv, "-c", self.config],
            env=dict(os.environ),
            path=directory,
        )
        self.pid: int = self._process.pid

    async def wait_listening(self, ports: list[int], timeout: float = 30.0) -> None:
        """Wait until every port in PORTS accepts a connection (or the child dies)."""
        deadline = self._reactor.seconds() + timeout
        for port in ports:
            while True:
                if self._child.ended.called:
                    raise RuntimeError("relaygate exited:\n" + self.startup_output())
                try:
                    endpoint = TCP4ClientEndpoint(self._reactor, "127.0.0.1", port, timeout=2)
                    probe = await connectProtocol(endpoint, Protocol())
                    assert probe.transport is not None
                    probe.transport.abortConnection()
                    break
                except Exception as e:  # twisted.internet.error.ConnectionRefusedError and kin
                    if self._reactor.seconds() > deadline:
                        raise RuntimeError(f"port {port} never listened: {e}") from e
                await deferLater(self._reactor, 0.05, lambda: None)

    def running(self) -> bool:
        """Whether the child is still running."""
        return not self._child.ended.called

    def startup_output(self) -> str:
        """What the child printed, and its log so far (for a start-up failure)."""
        return self._child.output.decode("utf-8", "replace") + self.read_log()

    def descriptors(self) -> int:
        """How many file descriptors the gateway has open now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        """The gateway's resident set size now, in KiB."""
        return memory_kib(self.pid)["VmRSS"]

    def read_log(self) -> str:
        """The gateway's whole log so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def bad_log_lines(self) -> list[str]:
        """Log lines with a traceback or an unhandled error, each with the line after it."""
        lines = self.read_log().splitlines()
        found = []
        for i, line in enumerate(lines):
            if any(marker in line for marker in BAD_LOG_MARKERS):
                found.append(" | ".join(lines[i : i + 3]))
        return found

    def count_in_log(self, text: str) -> int:
        """How many log lines contain TEXT."""
        return sum(text in line for line in self.read_log().splitlines())

    async def stop(self) -> None:
        """SIGTERM the child and wait until it has exited."""
        if not self._child.ended.called:
            self._process.signalProcess(signal.SIGTERM)
        await self._child.ended


async def settle(reactor: Any, measure: Any, target: int, slack: int, timeout: float) -> int:
    """Poll MEASURE() until it is within SLACK of TARGET or TIMEOUT passes; return the last value.

    A gateway closes connections a little after its peers do (timeouts, the HTTP pool), so the
    "after" figures are read once they stop moving toward the baseline, within a bound.
    """
    deadline = reactor.seconds() + timeout
    value: int = measure()
    while value > target + slack and reactor.seconds() < deadline:
        await deferLater(reactor, 0.1, lambda: None)
        value = measure()
    return value
