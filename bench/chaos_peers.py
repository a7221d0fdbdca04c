"""The gateway's scripted peers for the soak: backend SMTP servers that fail at random, and an
nginx-protocol auth service that routes each transaction to one of them (or fails).

Every choice is drawn from a C{random.Random} seeded with the run's seed and a stable name (the
transaction's tag, a backend's connection number), so a seed replays the same faults for the
same transactions whatever the timing. A transaction's tag is its client's MAIL FROM local part,
``chaos-m<message>-a<attempt>[-x]``: the backend and the auth service learn it from the
envelope, so their records join up with the client's.

What they record (L{Records}) is what the soak's invariants are checked against: every message a
backend committed (with the SHA-256 of its unstuffed content, and whether its 250 was written
with nothing failing after it), every 5xx it answered, and each fault it injected.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

TAG = re.compile(rb"<(chaos-[a-z0-9-]+)@")


@dataclass
class Commit:
    """One message a backend took responsibility for (it would deliver it)."""

    tag: str
    backend: str
    sha256: str
    size: int
    clean: bool
    """True when the backend wrote its 250 and injected no fault after committing."""


@dataclass
class Records:
    """What every peer saw and did during one run."""

    commits: list[Commit] = field(default_factory=list)
    refusals_5xx: set[tuple[str, int]] = field(default_factory=set)
    """(tag, code) of every 5xx a backend answered (a client may see exactly these)."""
    faults: Counter[str] = field(default_factory=Counter)
    tag_faults: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    backend_connections: int = 0
    auth_requests: int = 0

    def injected(self, kind: str, tag: str | None = None) -> None:
        """Count one injected fault (and remember which transaction it hit)."""
        self.faults[kind] += 1
        if tag is not None:
            self.tag_faults[tag].append(kind)


# Transaction plans: (kind, weight). "reset"/"stall" also draw a point.
_PLANS = [
    ("normal", 52),
    ("rcpt_4xx", 6),
    ("rcpt_5xx", 4),
    ("data_4xx", 6),
    ("data_5xx", 4),
    ("reset", 12),
    ("stall", 6),
    ("slow", 10),
]
# A client that abandons its transaction (tag ends in -x) meets a backend that answers slowly and
# then drops half of the time: the case of a reply nobody waits for any more.
_ABANDON_PLANS = [("normal", 3), ("slow_reset", 5), ("stall", 2)]
_RESET_POINTS = ["mail", "rcpt", "data_cmd", "mid_body", "after_dot", "after_commit"]
_STALL_POINTS = ["mail", "rcpt", "data_cmd", "after_dot", "after_commit"]


def _pick(rng: random.Random, table: list[tuple[str, int]]) -> str:
    return rng.choices([k for k, _ in table], [w for _, w in table])[0]


@dataclass
class Plan:
    """What one backend transaction does."""

    kind: str = "normal"
    point: str = ""
    delay: float = 0.0
    body_limit: int = 0


def plan_for(seed: int, tag: str) -> Plan:
    """The plan of the transaction TAG under SEED (warm-up tags always go normally)."""
    rng = random.Random(f"{seed}:tx:{tag}")
    if tag.startswith("chaos-warm") or tag.startswith("chaos-probe"):
        return Plan()
    if tag.endswith("-x"):
        kind = _pick(rng, _ABANDON_PLANS)
        if kind == "slow_reset":
            return Plan("reset", rng.choice(["mail", "rcpt"]), rng.uniform(0.1, 0.4))
        if kind == "stall":
            return Plan("stall", "rcpt")
        return Plan()
    kind = _pick(rng, _PLANS)
    if kind == "reset":
        return Plan(kind, rng.choice(_RESET_POINTS), rng.uniform(0, 0.2), rng.randint(1, 200_000))
    if kind == "stall":
        return Plan(kind, rng.choice(_STALL_POINTS))
    if kind == "slow":
        return Plan(kind, delay=rng.uniform(0.02, 0.4))
    return Plan(kind)


class ChaosBackend(Protocol):
    """A backend SMTP server that follows a L{Plan} per transaction.

    Commands are handled one at a time in arrival order (pipelined input waits in the buffer
    while a reply is delayed); the body is read raw until CRLF.CRLF and unstuffed.
    """

    factory: BackendFactory

    def connectionMade(self) -> None:
        f = self.factory
        f.records.backend_connections += 1
        number = f.connections = f.connections + 1
        rng = random.Random(f"{f.seed}:{f.name}:conn:{number}")
        self._multiline = f.faulty and rng.random() < 0.2
        self._xclient = rng.random() < 0.5
        roll = rng.random()
        self._buffer = b""
        self._body: bytearray | None = None
        self._plan = Plan()
        self._tag = ""
        self._busy = False
        self._stalled = False
        self._closed = False
        self._pending: list[Any] = []
        if self._multiline:
            f.records.injected("multiline_replies")
        if f.faulty and roll < 0.02:
            f.records.injected("reset@greeting")
            self._reset()
        elif f.faulty and roll < 0.04:
            f.records.injected("stall@greeting")
            self._stalled = True
        else:
            self._reply(220, "backend.test ESMTP chaos")
            if f.faulty and roll < 0.06:
                self._reset_at_ehlo = True
                return
        self._reset_at_ehlo = False

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        for call in self._pending:
            if call.active():
                call.cancel()

    def _reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed or killed server would."""
        assert self.transport is not None
        handle = self.transport.getHandle()  # type: ignore[attr-defined]
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()  # type: ignore[attr-defined]
        self._closed = True

    def _reply(self, code: int, *texts: str) -> None:
        lines = list(texts)
        if self._multiline and code != 354:
            lines = [*lines[:-1], "chaos multi-line reply", lines[-1]]
        out = b"".join(
            b"%d%s%s\r\n" % (code, b" " if i == len(lines) - 1 else b"-", t.encode())
            for i, t in enumerate(lines)
        )
        assert self.transport is not None
        self.transport.write(out)

    def dataReceived(self, data: bytes) -> None:
        if self._closed or self._stalled:
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        while not self._busy and not self._closed and not self._stalled:
            if self._body is not None:
                if not self._take_body():
                    return
                continue
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                return
            self._buffer = rest
            self._command(line)

    def _later(self, delay: float, action: Any) -> None:
        """Run ACTION after DELAY seconds, holding pipelined input until then."""
        if delay <= 0:
            action()
            return
        self._busy = True

        def run() -> None:
            self._busy = False
            if not self._closed:
                action()
                self._process()

        self._pending.append(self.factory.reactor.callLater(delay, run))

    def _fault_at(self, point: str) -> bool:
        """Inject the plan's reset or stall if it is due at POINT; True if it was."""
        plan = self._plan
        if plan.kind not in ("reset", "stall") or plan.point != point:
            return False
        kind = f"{plan.kind}@{point}"
        self.factory.records.injected(kind, self._tag)
        if plan.kind == "stall":
            self._stalled = True
        else:
            self._busy = True
            self._later_reset(plan.delay)
        return True

    def _later_reset(self, delay: float) -> None:
        self._pending.append(self.factory.reactor.callLater(delay, self._reset_if_open))

    def _reset_if_open(self) -> None:
        if not self._closed:
            self._reset()

    def _command(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].upper()
        records = self.factory.records
        if verb in (b"EHLO", b"HELO"):
            if self._reset_at_ehlo:
                records.injected("reset@ehlo")
                self._reset()
                return
            ext = ["PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES"]
            if self._xclient:
                ext.append("XCLIENT ADDR PORT NAME PROTO HELO LOGIN")
            self._reply(250, "backend.test", *ext)
        elif verb == b"XCLIENT":
            self._reply(220, "backend.test ESMTP chaos (after XCLIENT)")
        elif verb == b"MAIL":
            found = TAG.search(line)
            self._tag = found.group(1).decode() if found else "unknown"
            faulty = self.factory.faulty
            self._plan = plan_for(self.factory.seed, self._tag) if faulty else Plan()
            if self._plan.kind == "slow":
                records.injected("slow", self._tag)
            if not self._fault_at("mail"):
                self._later(self._plan.delay, lambda: self._reply(250, "2.1.0 Ok"))
        elif verb == b"RCPT":
            if self._fault_at("rcpt"):
                return
            if self._plan.kind == "rcpt_4xx":
                records.injected("rcpt_4xx", self._tag)
                self._reply(451, "4.3.0 chaos: try again later")
            elif self._plan.kind == "rcpt_5xx":
                records.injected("rcpt_5xx", self._tag)
                records.refusals_5xx.add((self._tag, 550))
                self._reply(550, "5.1.1 chaos: no such user")
            else:
                self._later(self._plan.delay, lambda: self._reply(250, "2.1.5 Ok"))
        elif verb == b"DATA":
            if self._fault_at("data_cmd"):
                return
            self._body = bytearray(b"\r\n")
            self._reply(354, "End data with <CR><LF>.<CR><LF>")
        elif verb == b"RSET":
            self._plan, self._tag = Plan(), ""
            self._reply(250, "2.0.0 Ok")
        elif verb == b"NOOP":
            self._reply(250, "2.0.0 Ok")
        elif verb == b"QUIT":
            self._reply(221, "2.0.0 Bye")
            assert self.transport is not None
            self.transport.loseConnection()
            self._closed = True
        else:
            self._reply(502, "5.5.2 Error: command not recognized")

    def _take_body(self) -> bool:
        """Move buffered bytes into the body; at end-of-data finish it. False: need more."""
        body = self._body
        assert body is not None
        start = max(0, len(body) - 4)
        body += self._buffer
        self._buffer = b""
        end = body.find(b"\r\n.\r\n", start)
        plan = self._plan
        if plan.kind == "reset" and plan.point == "mid_body":
            if (end < 0 and len(body) >= plan.body_limit) or end >= 0:
                self._fault_at("mid_body")
                return False
        if end < 0:
            return False
        self._buffer = bytes(body[end + 5 :])
        content = bytes(body[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
        self._body = None
        self._finish(content)
        return True

    def _finish(self, content: bytes) -> None:
        records = self.factory.records
        plan, tag = self._plan, self._tag
        if self._fault_at("after_dot"):
            return
        if plan.kind == "data_4xx":
            records.injected("data_4xx", tag)
            self._reply(451, "4.3.0 chaos: queue trouble, try again")
            return
        if plan.kind == "data_5xx":
            records.injected("data_5xx", tag)
            records.refusals_5xx.add((tag, 554))
            self._reply(554, "5.7.1 chaos: message refused")
            return
        after_commit = plan.kind in ("reset", "stall") and plan.point == "after_commit"
        digest = hashlib.sha256(content).hexdigest()
        commit = Commit(tag, self.factory.name, digest, len(content), clean=not after_commit)
        records.commits.append(commit)
        if self._fault_at("after_commit"):
            return
        self._later(plan.delay, lambda: self._reply(250, "2.0.0 Ok: queued as " + digest[:12]))


class BackendFactory(Factory):
    """Builds L{ChaosBackend}s for one named backend; C{faulty=False} never injects a fault."""

    protocol = ChaosBackend
    noisy = False

    def __init__(self, reactor: Any, name: str, seed: int, records: Records, faulty: bool) -> None:
        self.reactor = reactor
        self.name = name
        self.seed = seed
        self.records = records
        self.faulty = faulty
        self.connections = 0


class AuthResource(Resource):
    """nginx auth_http for SMTP with C{Auth-Method: none}: pick a backend per transaction.

    The backend is chosen from the transaction's tag, so every recipient of one transaction (and
    every lookup of one attempt) goes to the same backend. Sometimes it never answers (the
    gateway's C{[auth] timeout} must turn that into a 451) or answers HTTP 500.
    """

    isLeaf = True

    def __init__(self, seed: int, records: Records, ports: list[int], faulty: bool) -> None:
        super().__init__()
        self._seed = seed
        self._records = records
        self._ports = ports
        self._faulty = faulty
        self.hanging: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self._records.auth_requests += 1
        sender = request.getHeader("Auth-SMTP-From") or ""
        found = TAG.search(sender.encode())
        tag = found.group(1).decode() if found else "unknown"
        attempt = request.getHeader("Auth-Login-Attempt") or "1"
        rng = random.Random(f"{self._seed}:auth:{tag}:{attempt}")
        roll = rng.random()
        normal = tag.startswith(("chaos-warm", "chaos-probe"))
        if self._faulty and not normal and roll < 0.03:
            self._records.injected("auth_timeout", tag)
            self.hanging.append(request)
            return NOT_DONE_YET
        if self._faulty and not normal and roll < 0.06:
            self._records.injected("auth_500", tag)
            request.setResponseCode(500)
            return b""
        port = random.Random(f"{self._seed}:route:{tag}").choice(self._ports)
        request.setHeader("Auth-Status", "OK")
        request.setHeader("Auth-Server", "127.0.0.1")
        request.setHeader("Auth-Port", str(port))
        return b""


class _TrackedChannel(HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.site.channels.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class TrackingSite(Site):
    """A Site that can drop its open connections, so kept-alive ones don't count as leaks."""

    protocol = _TrackedChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[HTTPChannel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.site = self
        return channel

    def drop_connections(self) -> None:
        for channel in list(self.channels):
            assert channel.transport is not None
            channel.transport.abortConnection()  # type: ignore[attr-defined]
