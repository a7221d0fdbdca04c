#!/usr/bin/env python3
"""Fuzz a real relaygate's SMTP, IMAP and POP3 listeners (plain, STARTTLS, implicit TLS).

Usage: bench/fuzz.py --seconds S --seed N [--concurrency K] [--protocols smtp,imap,pop3]
                     [--flood-seconds F] [--flood-rate R] [--rss-limit-mib M]
                     [--twistd PATH] [--json FILE] [--directory DIR]

Starts, all on 127.0.0.1: a scripted SMTP backend (bench/chaos_peers.py, without faults), fake
IMAP and POP3 backends that log anybody in (bench/fuzz_peers.py), a test CA and server
certificate made now (tests/certs.py), and ``twistd -n relaygate`` with nine listeners. Then,
for S seconds, K connections at a time send seeded inputs (bench/fuzz_inputs.py): mutated valid
sessions (bit flips, truncation, huge lines, CR/LF/NUL injection, duplicated or deleted
pieces, random lines), random bytes, random chunking (pipelining), real TLS handshakes,
garbage and partial ClientHellos (at the start, or after STARTTLS), and four ways to leave.

Afterwards, and the exit status is 1 if one fails: no traceback or unhandled error in the
gateway's log; its RSS stayed within --rss-limit-mib of its baseline (the maximum is printed);
its descriptors came back to their baseline; a client that pipelines a few commands and then
shuts down its sending side gets every reply it is owed (one per protocol); a client that
pipelines NOOPs for --flood-seconds
without reading a reply grows the gateway's RSS by at most 6 MiB (one per protocol); and real
clients still work through it (smtplib plain and STARTTLS, each message checked byte for byte
at the backend; imaplib over implicit TLS; poplib with STLS). Inputs per second and the
duration are printed.
"""

from __future__ import annotations

import argparse
import hashlib
import imaplib
import json
import os
import poplib
import random
import re
import resource
import shutil
import smtplib
import socket
import ssl
import struct
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from chaos_peers import BackendFactory, Records
from fuzz_inputs import FLOOD_LINES, STARTTLS, Case, client_hellos, make_case
from fuzz_peers import imap_factory, pop3_factory
from gateway import DEFAULT_TWISTD, Gateway, settle
from loopback import free_port, unread_bytes, unsent_bytes
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.certs import make_pki  # noqa: E402

PROTOCOLS = ("smtp", "imap", "pop3")
TLS_MODES = ("none", "starttls", "implicit")
FD_SLACK = 3
# Pipelined commands sent before a half-close, the pattern of a final reply line, and how many
# such lines the client is owed (SMTP: greeting, EHLO, MAIL, RCPT from the backend, QUIT).
HALF_CLOSE = {
    "smtp": (
        b"EHLO probe.test\r\nMAIL FROM:<chaos-probe-hc@fuzz.test>\r\n"
        b"RCPT TO:<user@dest.test>\r\nQUIT\r\n",
        re.compile(rb"\d{3} "),
        5,
    ),
    "imap": (b"a CAPABILITY\r\nb NOOP\r\nc LOGOUT\r\n", re.compile(rb"[abc] OK "), 3),
    "pop3": (b"CAPA\r\nNOOP\r\nQUIT\r\n", re.compile(rb"\+OK"), 4),
}
# How much a gateway's RSS may grow while one client pipelines NOOPs for --flood-seconds and
# never reads: a gateway that pauses such a client holds its buffers' worth (IMAP and POP3
# grow by under 2 MiB in 10 s); one that does not grows by about 3 MiB a second (SMTP, defect 1).
FLOOD_RSS_LIMIT_KIB = 6 * 1024

CONFIG = """\
[server]
name = "gw.fuzz.test"
idle_timeout = 5.0
connect_timeout = 2.0
session_timeout = 30.0
{listeners}
[tls]
certificate = "{cert}"
key = "{key}"
handshake_timeout = 3.0
[[route]]
protocol = "smtp"
match = "*"
backends = ["127.0.0.1:{smtp}"]
[[route]]
protocol = "imap"
match = "*"
backends = ["127.0.0.1:{imap}"]
[[route]]
protocol = "pop3"
match = "*"
backends = ["127.0.0.1:{pop3}"]
[smtp]
backend_timeout = 5.0
[imap]
timeout = 5.0
proxy_timeout = 10.0
[pop3]
timeout = 5.0
proxy_timeout = 10.0
"""
LISTEN = '[[listen]]\nprotocol = "{protocol}"\naddress = "127.0.0.1:{port}"\ntls = "{tls}"\n'
# How the gateway says "go ahead" to STARTTLS/STLS: (marker, how many times it must appear).
GO_AHEAD = {"smtp": (b"220 ", 2), "imap": (b"s OK", 1), "pop3": (b"+OK", 2)}


class FuzzClient(Protocol):
    """Plays one L{Case} against a listener and fires C{done} when the connection is gone."""

    def __init__(self, runner: Fuzz, case: Case, rng: random.Random) -> None:
        self.runner = runner
        self.case = case
        self.rng = rng
        self.done: Deferred[None] = Deferred()
        self.received = b""
        self.received_count = 0
        self.waiting_go = False
        self.last_data = 0.0
        self.calls: list[Any] = []

    def _later(self, delay: float, action: Any) -> None:
        self.calls.append(self.runner.reactor.callLater(delay, action))

    def connectionMade(self) -> None:
        start = self.case.start
        self._later(4.0, self._give_up)
        if self.case.ending == "flood":
            self.transport.pauseProducing()  # type: ignore[union-attr]
        if start == "tls":
            self.transport.startTLS(self.runner.tls_options)  # type: ignore[union-attr]
            self._send(0)
        elif start in ("starttls", "starttls_garbage"):
            self.waiting_go = True
            self.transport.write(STARTTLS[self.case.protocol])  # type: ignore[union-attr]
            self._later(1.0, self._no_go_ahead)
        else:
            self._send(0)

    def _no_go_ahead(self) -> None:
        if self.waiting_go:
            self.waiting_go = False
            self._end()

    def dataReceived(self, data: bytes) -> None:
        self.received_count += len(data)
        self.last_data = self.runner.reactor.seconds()
        if self.waiting_go:
            self.received = (self.received + data)[-65536:]
            marker, count = GO_AHEAD[self.case.protocol]
            lines = self.received.split(b"\r\n")
            if sum(line.startswith(marker) for line in lines[:-1]) >= count:
                self.waiting_go = False
                if self.case.start == "starttls":
                    self.transport.startTLS(self.runner.tls_options)  # type: ignore[union-attr]
                self._send(0)

    def _send(self, index: int) -> None:
        if self.done.called:
            return
        if index >= len(self.case.chunks):
            self._end()
            return
        assert self.transport is not None
        self.transport.write(self.case.chunks[index])
        self.runner.bytes_sent += len(self.case.chunks[index])
        delay = self.rng.choice([0.0, 0.0, 0.001, 0.01])
        self._later(delay, lambda: self._send(index + 1))

    def _end(self) -> None:
        transport: Any = self.transport
        ending = self.case.ending
        if self.done.called or transport is None:
            return
        if ending == "abort":
            transport.abortConnection()
        elif ending == "half_close" and self.case.start not in ("tls", "starttls"):
            # TCP half-close (shutdown SHUT_WR); over TLS a close_notify is the same signal,
            # and Twisted's TLS client mishandles a half-close it started (AttributeError).
            transport.loseWriteConnection()
            self._later(1.0, transport.loseConnection)
        elif ending == "flood":
            # Give the gateway a second to read (or not) what is still in flight, then leave.
            self._later(1.0, transport.abortConnection)
        elif ending == "read":
            self._read_until_quiet(self.runner.reactor.seconds() + 1.0)
        else:
            transport.loseConnection()

    def _read_until_quiet(self, until: float) -> None:
        now = self.runner.reactor.seconds()
        if self.done.called:
            return
        if now >= until or (self.last_data and now - self.last_data > 0.2):
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self._later(0.05, lambda: self._read_until_quiet(until))

    def _give_up(self) -> None:
        if not self.done.called and self.transport is not None:
            self.runner.gave_up += 1
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        for call in self.calls:
            if call.active():
                call.cancel()
        self.runner.bytes_received += self.received_count
        if not self.done.called:
            self.done.callback(None)


class Fuzz:
    """One fuzz run: peers, gateway, inputs, checks and figures."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.records = Records()
        self.protocols = [p for p in args.protocols.split(",") if p]
        self.inputs: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.endings: Counter[str] = Counter()
        self.mutations: Counter[str] = Counter()
        self.bytes_sent = self.bytes_received = self.gave_up = self.connect_errors = 0
        self.max_rss = 0

    async def start(self) -> None:
        self.directory = self.args.directory or tempfile.mkdtemp(prefix="relaygate-fuzz-")
        os.makedirs(self.directory, exist_ok=True)
        pki = make_pki(os.path.join(self.directory, "pki"))
        self.ca_file = pki.ca.certificate
        with open(pki.ca.certificate, "rb") as f:
            ca = Certificate.loadPEM(f.read())
        self.tls_options = optionsForClientTLS("localhost", trustRoot=ca)
        self.listening = [
            self.reactor.listenTCP(0, factory, interface="127.0.0.1")
            for factory in (
                BackendFactory(self.reactor, "smtp", self.args.seed, self.records, faulty=False),
                imap_factory(),
                pop3_factory(),
            )
        ]
        smtp, imap, pop3 = (port.getHost().port for port in self.listening)
        self.ports = {(p, t): free_port() for p in PROTOCOLS for t in TLS_MODES}
        listeners = "".join(
            LISTEN.format(protocol=p, port=port, tls=t) for (p, t), port in self.ports.items()
        )
        config = CONFIG.format(
            listeners=listeners,
            cert=pki.server.certificate,
            key=pki.server.key,
            smtp=smtp,
            imap=imap,
            pop3=pop3,
        )
        self.gateway = Gateway(self.reactor, self.directory, config, self.args.twistd)
        await self.gateway.wait_listening(list(self.ports.values()))

    def _sample_rss(self) -> None:
        rss = self.gateway.rss_kib()
        self.max_rss = max(self.max_rss, rss)
        if self.reactor.seconds() >= self.next_timeline:
            self.timeline.append(rss)
            self.next_timeline += self.args.seconds / 10

    async def one_input(self, rng: random.Random, hellos: list[bytes]) -> None:
        protocol = rng.choice(self.protocols)
        tls = rng.choice(TLS_MODES)
        case = make_case(rng, protocol, tls, hellos, self.args.flood_rate)
        self.inputs[f"{protocol}/{tls}"] += 1
        self.starts[case.start] += 1
        self.endings[case.ending] += 1
        self.mutations.update(case.mutations)
        client = FuzzClient(self, case, rng)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.ports[protocol, tls], 5)
        try:
            await connectProtocol(endpoint, client)
        except Exception:
            self.connect_errors += 1
            return
        await client.done

    async def worker(self, number: int, deadline: float, hellos: list[bytes]) -> None:
        count = 0
        while self.reactor.seconds() < deadline:
            count += 1
            rng = random.Random(f"{self.args.seed}:fuzz:{number}:{count}")
            await self.one_input(rng, hellos)

    async def checks(self, round_: int) -> dict[str, str]:
        """Real clients through the gateway; each check's result is 'ok' or what went wrong."""
        results = {}
        for name, check in (
            ("smtp_plain", self._smtp_check(round_, "none")),
            ("smtp_starttls", self._smtp_check(round_, "starttls")),
            ("imap_implicit_tls", deferToThread(self._imap_check)),
            ("pop3_stls", deferToThread(self._pop3_check)),
        ):
            try:
                await check
                results[name] = "ok"
            except Exception as e:
                results[name] = f"{type(e).__name__}: {e}"
        return results

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    async def _smtp_check(self, round_: int, tls: str) -> None:
        tag = f"chaos-probe{round_}-{tls}"
        message = f"Message-ID: <{tag}@fuzz.test>\r\nSubject: probe\r\n\r\nstill here\r\n.dot\r\n"
        content = message.encode()
        port = self.ports["smtp", tls]

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                if tls == "starttls":
                    client.starttls(context=self._context())
                client.sendmail(f"{tag}@fuzz.test", ["user@dest.test"], content)

        await deferToThread(send)
        digest = hashlib.sha256(content).hexdigest()
        found = [c for c in self.records.commits if c.tag == tag]
        if [c.sha256 for c in found] != [digest]:
            raise AssertionError(f"backend got {found!r} for {tag}")

    def _imap_check(self) -> None:
        port = self.ports["imap", "implicit"]
        client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=self._context(), timeout=10)
        try:
            typ, _ = client.login("user@x.test", "secret")
            if typ != "OK":
                raise AssertionError(f"IMAP login: {typ}")
        finally:
            client.shutdown()

    def _pop3_check(self) -> None:
        client = poplib.POP3("127.0.0.1", self.ports["pop3", "starttls"], timeout=10)
        try:
            client.stls(context=self._context())
            client.user("user@x.test")
            client.pass_("secret")
            client.quit()
        finally:
            client.close()

    def _flood(self, protocol: str) -> dict[str, int]:
        """Pipeline NOOPs at the plain listener, never reading: how much does the gateway take?

        A gateway that stops reading a client that does not read its replies (issue 11,
        defect 1) lets the kernel's buffers fill and the sender stall; one that keeps reading
        queues every reply in memory. C{gateway_read} is what left the kernel's buffers toward
        the gateway (its own send buffer of replies included, so a few MB either way); its
        RSS growth is what tells. Blocking calls in a thread: this is the bench's client.
        """
        seconds = self.args.flood_seconds
        block = FLOOD_LINES[protocol] * 4096
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", self.ports[protocol, "none"]))
            sock.setblocking(False)
            before = peak = self.gateway.rss_kib()
            sent, deadline = 0, time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    sent += sock.send(block)
                except BlockingIOError:
                    time.sleep(0.02)
                peak = max(peak, self.gateway.rss_kib())
            port = self.ports[protocol, "none"]
            queued = unsent_bytes(sock) + unread_bytes(port, sock.getsockname()[1])
            read = sent - queued
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return {"bytes_sent": sent, "gateway_read": read, "rss_growth_kib": peak - before}

    def _half_close(self, protocol: str) -> dict[str, Any]:
        """Pipeline a few commands, shut down the sending side, and count the replies owed.

        RFC 5321 4.1.1.10, RFC 3501 and RFC 1939 answer QUIT/LOGOUT before closing, and
        a server owes a reply to every command it read: a half-close (shutdown(SHUT_WR), as
        some clients do after their last command) must not lose them (issue 11, defect 5).
        """
        commands, marker, owed = HALF_CLOSE[protocol]
        with socket.create_connection(("127.0.0.1", self.ports[protocol, "none"]), 10) as sock:
            sock.sendall(commands)
            sock.shutdown(socket.SHUT_WR)
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except OSError as e:
                received += f"[{type(e).__name__}]".encode()
        lines = received.split(b"\r\n")
        got = sum(bool(marker.match(line)) for line in lines)
        return {"owed": owed, "got": got, "last": lines[-2:] if len(lines) > 1 else lines}

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        await self.start()
        try:
            warm = await self.checks(0)
            if set(warm.values()) != {"ok"}:
                raise RuntimeError(f"the gateway does not work before fuzzing: {warm}")
            await deferLater(self.reactor, 0.5, lambda: None)
            fds_before, rss_before = self.gateway.descriptors(), self.gateway.rss_kib()
            self.max_rss = rss_before
            self.timeline: list[int] = []
            self.next_timeline = self.reactor.seconds()
            sampler = LoopingCall(self._sample_rss)
            sampler.clock = self.reactor
            sampler.start(0.2)
            hellos = client_hellos()
            fuzz_started = time.monotonic()
            deadline = self.reactor.seconds() + self.args.seconds
            workers = [self.worker(i, deadline, hellos) for i in range(self.args.concurrency)]
            await gatherResults([Deferred.fromCoroutine(w) for w in workers])
            seconds = time.monotonic() - fuzz_started
            sampler.stop()
            self._sample_rss()
            fds_after = await settle(
                self.reactor, self.gateway.descriptors, fds_before, FD_SLACK, 15.0
            )
            rss_after = self.gateway.rss_kib()
            floods = {}
            if self.args.flood_seconds > 0:
                for protocol in self.protocols:
                    floods[protocol] = await deferToThread(self._flood, protocol)
            half_closes = {}
            for protocol in self.protocols:
                half_closes[protocol] = await deferToThread(self._half_close, protocol)
            after = await self.checks(1)
            alive = self.gateway.running()
            bad = self.gateway.bad_log_lines()
        finally:
            await self.gateway.stop()
            for port in self.listening:
                await port.stopListening()
        total = sum(self.inputs.values())
        limit = int(self.args.rss_limit_mib * 1024)
        invariants = {
            "log_clean": not bad,
            "rss_bounded": self.max_rss <= rss_before + limit,
            "descriptors": fds_after <= fds_before + FD_SLACK,
            "still_delivers": set(after.values()) == {"ok"},
            "gateway_alive": alive,
            "half_close_answered": all(h["got"] == h["owed"] for h in half_closes.values()),
            "flood_bounded": all(
                f["rss_growth_kib"] <= FLOOD_RSS_LIMIT_KIB for f in floods.values()
            ),
        }
        return {
            "seed": self.args.seed,
            "seconds": round(seconds, 1),
            "inputs": total,
            "inputs_per_second": round(total / seconds, 1),
            "inputs_by_listener": dict(sorted(self.inputs.items())),
            "starts": dict(self.starts),
            "endings": dict(self.endings),
            "mutations": dict(sorted(self.mutations.items())),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "connect_errors": self.connect_errors,
            "inputs_cut_off_after_4s": self.gave_up,
            "rss_kib_before": rss_before,
            "rss_kib_max": self.max_rss,
            "rss_kib_after": rss_after,
            "rss_kib_every_tenth": self.timeline,
            "flood_without_reading": floods,
            "half_close_replies": {
                p: {"owed": h["owed"], "got": h["got"]} for p, h in half_closes.items()
            },
            "descriptors_before": fds_before,
            "descriptors_after": fds_after,
            "checks_after": after,
            "log_bad_lines": len(bad),
            "log_examples": bad[:5],
            "invariants": invariants,
            "ok": all(invariants.values()),
            "wall_seconds": round(time.monotonic() - started, 1),
        }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--rss-limit-mib", type=float, default=64.0)
    parser.add_argument(
        "--flood-seconds",
        type=float,
        default=5.0,
        help="per protocol, after the fuzz: pipeline NOOPs without reading (0: skip)",
    )
    parser.add_argument(
        "--flood-rate", type=float, default=0.01, help="share of inputs that never read replies"
    )
    parser.add_argument("--twistd", default=DEFAULT_TWISTD)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--directory",
        help="for the config and log, kept (default: a temporary one, removed if ok)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    return args


async def main(reactor: Any, argv: list[str]) -> None:
    args = parse_args(argv)
    print(f"seed: {args.seed}", flush=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    fuzz = Fuzz(reactor, args)
    figures = await fuzz.run()
    for key, value in figures.items():
        if key == "invariants":
            for name, held in value.items():
                print(f"invariant {name}: {'ok' if held else 'FAILED'}")
        else:
            print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if not figures["ok"]:
        print(f"gateway log kept in {fuzz.gateway.log_path}", flush=True)
        raise SystemExit(1)
    if not args.directory:
        shutil.rmtree(fuzz.directory, ignore_errors=True)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
