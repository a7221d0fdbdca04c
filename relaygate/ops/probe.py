"""One health probe's conversation: greeting, EHLO/LOGOUT/QUIT, and STARTTLS when required.

L{ProbeReader} is a line reader whose L{ProbeReader.read_line} returns a Deferred, so each
protocol's probe reads as the dialogue it is (L{run_probe}); cancelling a read (the probe's
timeout) aborts the connection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from typing_extensions import override

from relaygate.addresses import HostPort

MAX_LINE = 8192


@dataclass(frozen=True)
class ProbeTarget:
    """One backend to probe, with the settings of the route that names it."""

    protocol: str
    backend: HostPort
    tls: str = "none"
    """C{none}, C{opportunistic} (probed in plain text), C{required} or C{implicit}."""
    proxy_protocol: str = "none"
    tls_creator: IOpenSSLClientConnectionCreator | None = None
    """The verifying client TLS for C{required} and C{implicit}."""


class ProbeFailed(Exception):
    """The backend answered, but not as a healthy server would."""


class ProbeReader(Protocol):
    """Reads CRLF (or LF) terminated lines on demand."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: deque[bytes] = deque()
        self._waiting: Deferred[bytes] | None = None
        self._lost: Failure | None = None

    @override
    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self._lines.extend(line.rstrip(b"\r") for line in lines)
        if len(self._buffer) > MAX_LINE:
            self._lost = Failure(ProbeFailed("line too long"))
            self.abort()
        self._deliver()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self._lost is None:
            self._lost = reason
        self._deliver()

    def _deliver(self) -> None:
        waiting = self._waiting
        if waiting is None:
            return
        if self._lines:
            self._waiting = None
            waiting.callback(self._lines.popleft())
        elif self._lost is not None:
            self._waiting = None
            waiting.errback(self._lost)

    def read_line(self) -> Deferred[bytes]:
        """The next line, without its line end."""
        assert self._waiting is None
        result: Deferred[bytes] = Deferred(self._cancelled)
        self._waiting = result
        self._deliver()
        return result

    def _cancelled(self, waiting: Deferred[bytes]) -> None:
        # The probe timed out: Deferred fails the read itself; the connection goes.
        self._waiting = None
        self.abort()

    def send(self, line: bytes) -> None:
        """Write one command line."""
        assert self.transport is not None
        self.transport.write(line + b"\r\n")

    def start_tls(self, creator: IOpenSSLClientConnectionCreator | None) -> None:
        """Upgrade the connection (after the server agreed to STARTTLS/STLS)."""
        assert self.transport is not None
        self.transport.startTLS(creator)  # type: ignore[attr-defined]

    def abort(self) -> None:
        """Drop the connection at once (the probe is over)."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


async def _smtp_reply(reader: ProbeReader, want: bytes) -> None:
    """Read one (multi-line) SMTP reply and check its code is C{want}."""
    while True:
        line = await reader.read_line()
        if line[:3] != want:
            raise ProbeFailed(f"expected {want.decode()}, got {line[:80]!r}")
        if line[3:4] != b"-":
            return


async def _smtp(reader: ProbeReader, name: str, target: ProbeTarget) -> None:
    await _smtp_reply(reader, b"220")
    reader.send(b"EHLO " + name.encode("ascii", "replace"))
    await _smtp_reply(reader, b"250")
    if target.tls == "required":
        reader.send(b"STARTTLS")
        await _smtp_reply(reader, b"220")
        reader.start_tls(target.tls_creator)
        reader.send(b"EHLO " + name.encode("ascii", "replace"))
        await _smtp_reply(reader, b"250")
    reader.send(b"QUIT")
    await _smtp_reply(reader, b"221")


async def _imap_tagged(reader: ProbeReader, tag: bytes) -> bytes:
    """Skip untagged lines; the tagged completion's status word."""
    while True:
        line = await reader.read_line()
        if line.startswith(tag + b" "):
            return line[len(tag) + 1 :].split(b" ", 1)[0].upper()


async def _imap(reader: ProbeReader, name: str, target: ProbeTarget) -> None:
    greeting = await reader.read_line()
    if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
        raise ProbeFailed(f"expected * OK, got {greeting[:80]!r}")
    if target.tls == "required":
        reader.send(b"h1 STARTTLS")
        status = await _imap_tagged(reader, b"h1")
        if status != b"OK":
            raise ProbeFailed(f"STARTTLS answered {status!r}")
        reader.start_tls(target.tls_creator)
    reader.send(b"h2 LOGOUT")
    status = await _imap_tagged(reader, b"h2")
    if status != b"OK":
        raise ProbeFailed(f"LOGOUT answered {status!r}")


async def _pop3_ok(reader: ProbeReader, what: str) -> None:
    line = await reader.read_line()
    if not line.startswith(b"+OK"):
        raise ProbeFailed(f"expected +OK to {what}, got {line[:80]!r}")


async def _pop3(reader: ProbeReader, name: str, target: ProbeTarget) -> None:
    await _pop3_ok(reader, "the greeting")
    if target.tls == "required":
        reader.send(b"STLS")
        await _pop3_ok(reader, "STLS")
        reader.start_tls(target.tls_creator)
    reader.send(b"QUIT")
    await _pop3_ok(reader, "QUIT")


async def _any(reader: ProbeReader, name: str, target: ProbeTarget) -> None:
    """A backend of a C{protocol = "*"} route that several protocols use: a greeting of any
    of the three is healthy (the probe cannot know which one to speak)."""
    greeting = await reader.read_line()
    if not greeting.startswith((b"220", b"* OK", b"+OK")):
        raise ProbeFailed(f"expected a mail greeting, got {greeting[:80]!r}")


_PROBES = {"smtp": _smtp, "imap": _imap, "pop3": _pop3, "*": _any}


async def run_probe(reader: ProbeReader, protocol: str, name: str, target: ProbeTarget) -> None:
    """Hold the C{protocol} dialogue on C{reader}; raise when the backend is not healthy."""
    await _PROBES[protocol](reader, name, target)
