#!/usr/bin/env python3
"""Fault-injection soak: many MTA-like clients through a real relaygate to backends that fail.

Usage: bench/chaos.py --seed N --messages M --concurrency C --duration S [--max-size BYTES]
                      [--twistd PATH] [--json FILE]

Starts, all on 127.0.0.1: three scripted backend SMTP servers and an nginx-protocol auth service
(bench/chaos_peers.py) in this process, and ``twistd -n relaygate`` as a child with short
timeouts. Then C clients send M messages of 1 KiB to --max-size (log-uniform), retrying on 4xx
or a lost connection as an MTA would (bench/chaos_client.py). Backends per transaction answer
normally, answer slowly, give 4xx/5xx at RCPT or after the dot, reset the connection (RST) at a
random point (after committing the message included) or stall; some use multi-line replies;
the auth service sometimes never answers or answers 500. Every random choice comes from --seed.

Invariants, printed as figures; the exit status is 1 if one fails:
- lost = 0: every message a client got 2xx for was committed by a backend in that attempt;
- corrupted = 0: and its bytes (SHA-256, unstuffed) are the client's;
- duplicated = 0: no attempt was committed twice;
- 5xx for a temporary fault = 0: every 5xx a client saw was a backend's own 5xx;
- backend 2xx not relayed = 0: a backend's clean 250 always reached its client (an MTA
  that missed it sends the message again: a duplicate in the mailbox);
- half-close replies lost = 0: a client that shut down its sending side still got the replies
  to the commands it sent;
- client timeouts = 0 and unfinished = 0: no session hung;
- descriptors and RSS return to their baseline (after a warm-up) within a slack;
- no traceback or unhandled error in the gateway's log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any

from chaos_client import Attempt, Message, digest, message_content, message_size, run_session
from chaos_peers import AuthResource, BackendFactory, Records, TrackingSite
from gateway import DEFAULT_TWISTD, Gateway, settle
from loopback import free_port
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

CONFIG = """\
[server]
name = "gw.chaos.test"
idle_timeout = 20.0
connect_timeout = 2.0
session_timeout = 300.0
[[listen]]
protocol = "smtp"
address = "127.0.0.1:{port}"
[auth]
http = "http://127.0.0.1:{auth}/auth"
timeout = 1.0
[smtp]
backend_timeout = 2.0
max_message_size = {max_message_size}
"""

MAX_ATTEMPTS = 12
FD_SLACK = 3


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--duration", type=float, default=120.0, help="bound in seconds")
    parser.add_argument("--max-size", type=int, default=1 << 20, help="largest message, bytes")
    parser.add_argument("--rss-slack-mib", type=float, default=16.0)
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


class Soak:
    """One run: peers, gateway, clients, and the figures."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.records = Records()
        self.attempts: list[Attempt] = []
        self.messages = [
            Message(n, "", message_size(args.seed, n, args.max_size)) for n in range(args.messages)
        ]
        self.sessions = 0

    async def start(self) -> None:
        seed = self.args.seed
        self.backend_ports = []
        self.listening = []
        self.backends = []
        for name in ("backend-a", "backend-b", "backend-c"):
            # Faults start after the warm-up (which must succeed to give a baseline).
            factory = BackendFactory(self.reactor, name, seed, self.records, faulty=False)
            self.backends.append(factory)
            port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.listening.append(port)
            self.backend_ports.append(port.getHost().port)
        self.auth = AuthResource(seed, self.records, self.backend_ports, faulty=True)
        site = TrackingSite(self.auth)
        self.auth_site = site
        auth_port = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        self.listening.append(auth_port)
        self.port = free_port()
        self.directory = self.args.directory or tempfile.mkdtemp(prefix="relaygate-chaos-")
        os.makedirs(self.directory, exist_ok=True)
        config = CONFIG.format(
            port=self.port,
            auth=auth_port.getHost().port,
            max_message_size=max(self.args.max_size * 2, 1 << 20),
        )
        self.gateway = Gateway(self.reactor, self.directory, config, self.args.twistd)
        await self.gateway.wait_listening([self.port])

    async def quiesce(self) -> tuple[int, int]:
        """Drop the auth service's kept-alive connections; return (descriptors, RSS KiB)."""
        self.auth_site.drop_connections()
        for request in self.auth.hanging:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()
        self.auth.hanging.clear()
        await deferLater(self.reactor, 0.5, lambda: None)
        return self.gateway.descriptors(), self.gateway.rss_kib()

    async def warm_up(self) -> None:
        """A few fault-free messages (one of the largest size) so buffers and pools exist."""
        warm = [Message(-(i + 1), "", 1024 if i else self.args.max_size) for i in range(4)]
        for message in warm:
            attempts: list[Attempt] = []
            await run_session(
                self.reactor,
                self.port,
                self.args.seed,
                self.args.max_size,
                [message],
                "normal",
                attempts,
            )
            if attempts[0].result != "2xx":
                raise RuntimeError(f"warm-up message failed: {attempts[0]}")
        for factory in self.backends:
            factory.faulty = True

    async def worker(self, number: int, deadline: float) -> None:
        """Take due messages and run sessions until all are done or the deadline passes."""
        while self.reactor.seconds() < deadline:
            now = self.reactor.seconds()
            due = [m for m in self.messages if m.state == "pending" and m.due <= now]
            if not due:
                if all(m.state != "pending" for m in self.messages):
                    return
                await deferLater(self.reactor, 0.05, lambda: None)
                continue
            self.sessions += 1
            rng = random.Random(f"{self.args.seed}:session:{number}:{self.sessions}")
            behaviour = rng.choices(["normal", "half_close", "abandon"], [84, 8, 8])[0]
            count = 1 if behaviour != "normal" else rng.choice([1, 1, 2, 3])
            batch = due[:count]
            for message in batch:
                message.state = "busy"
            attempts: list[Attempt] = []
            await run_session(
                self.reactor,
                self.port,
                self.args.seed,
                self.args.max_size,
                batch,
                behaviour,
                attempts,
            )
            self.attempts.extend(attempts)
            for message, attempt in zip(batch, attempts, strict=True):
                self._settle_message(message, attempt, rng)

    def _settle_message(self, message: Message, attempt: Attempt, rng: random.Random) -> None:
        if attempt.result == "2xx":
            message.state, message.delivered_tag = "delivered", attempt.tag
        elif attempt.result == "5xx":
            message.state = "bounced"
        elif message.attempts >= MAX_ATTEMPTS:
            message.state = "gave_up"
        else:
            message.state = "pending"
            message.due = self.reactor.seconds() + rng.uniform(0.05, 0.5)

    async def run(self) -> dict[str, Any]:
        args = self.args
        started = time.monotonic()
        await self.start()
        try:
            await self.warm_up()
            fds_before, rss_before = await self.quiesce()
            deadline = self.reactor.seconds() + args.duration
            soak_started = time.monotonic()
            workers = [self.worker(i, deadline) for i in range(args.concurrency)]
            await gatherResults([Deferred.fromCoroutine(w) for w in workers])
            soak_seconds = time.monotonic() - soak_started
            for message in self.messages:
                if message.state in ("pending", "busy"):
                    message.state = "unfinished"
            await self.quiesce()
            fds_after = await settle(
                self.reactor, self.gateway.descriptors, fds_before, FD_SLACK, 15.0
            )
            slack_kib = int(args.rss_slack_mib * 1024)
            rss_after = await settle(
                self.reactor, self.gateway.rss_kib, rss_before, slack_kib, 5.0
            )
            bad_lines = self.gateway.bad_log_lines()
        finally:
            await self.gateway.stop()
            for port in self.listening:
                await port.stopListening()
        figures = self.figures(fds_before, fds_after, rss_before, rss_after, bad_lines)
        figures["soak_seconds"] = round(soak_seconds, 1)
        figures["wall_seconds"] = round(time.monotonic() - started, 1)
        return figures

    def figures(
        self, fds_before: int, fds_after: int, rss_before: int, rss_after: int, bad: list[str]
    ) -> dict[str, Any]:
        args = self.args
        for message in self.messages:
            message.sha256 = digest(message_content(args.seed, message.number, args.max_size))
        commits = defaultdict(list)
        for commit in self.records.commits:
            commits[commit.tag].append(commit)
        lost = corrupted = duplicated = not_relayed = injected_atf = 0
        examples: dict[str, list[str]] = defaultdict(list)
        for tag, found in commits.items():
            if len(found) > 1:
                duplicated += len(found) - 1
                examples["duplicated"].append(tag)
        attempts_by_tag = {a.tag: a for a in self.attempts}
        for message in self.messages:
            if message.state != "delivered":
                continue
            found = commits.get(message.delivered_tag, [])
            if not found:
                lost += 1
                examples["lost"].append(message.delivered_tag)
            elif any(c.sha256 != message.sha256 for c in found):
                corrupted += 1
                examples["corrupted"].append(message.delivered_tag)
        for tag, found in commits.items():
            attempt = attempts_by_tag.get(tag)
            if tag.startswith("chaos-warm") or attempt is None or attempt.result == "2xx":
                continue
            for commit in found:
                if commit.clean:
                    not_relayed += 1
                    examples["backend_2xx_not_relayed"].append(
                        f"{tag} ({attempt.behaviour}: {attempt.result})"
                    )
                else:
                    injected_atf += 1
        five_for_temp = 0
        for attempt in self.attempts:
            for stage, code in attempt.codes.items():
                if stage == "data" and attempt.codes.get("rcpt", 0) >= 300:
                    continue  # DATA after no accepted recipient: 503/554 is the right answer
                if 500 <= code < 600 and (attempt.tag, code) not in self.records.refusals_5xx:
                    five_for_temp += 1
                    examples["5xx_for_temporary"].append(f"{attempt.tag} {stage} {code}")
        outcomes_by_fault: dict[str, Counter[str]] = defaultdict(Counter)
        for tag, kinds in self.records.tag_faults.items():
            attempt = attempts_by_tag.get(tag)
            for kind in kinds:
                outcomes_by_fault[kind][attempt.result if attempt else "unknown"] += 1
        states = Counter(m.state for m in self.messages)
        results = Counter(a.result for a in self.attempts)
        owed_lost = sum(a.owed_lost for a in self.attempts)
        half_closes = sum(a.behaviour == "half_close" for a in self.attempts)
        timeouts = results.get("timeout", 0)
        rss_slack = int(args.rss_slack_mib * 1024)
        invariants = {
            "lost": lost == 0,
            "corrupted": corrupted == 0,
            "duplicated": duplicated == 0,
            "5xx_for_temporary": five_for_temp == 0,
            "backend_2xx_not_relayed": not_relayed == 0,
            "half_close_replies_lost": owed_lost == 0,
            "client_timeouts": timeouts == 0,
            "unfinished": states.get("unfinished", 0) == 0,
            "descriptors": fds_after <= fds_before + FD_SLACK,
            "rss": rss_after <= rss_before + rss_slack,
            "log_clean": not bad,
        }
        return {
            "seed": args.seed,
            "messages": args.messages,
            "concurrency": args.concurrency,
            "max_size": args.max_size,
            "bytes_offered": sum(m.size for m in self.messages),
            "message_states": dict(states),
            "attempts": len(self.attempts),
            "attempt_results": dict(results),
            "sessions": self.sessions,
            "backend_connections": self.records.backend_connections,
            "auth_requests": self.records.auth_requests,
            "faults_injected": dict(sorted(self.records.faults.items())),
            "client_outcome_by_fault": {k: dict(v) for k, v in sorted(outcomes_by_fault.items())},
            "lost": lost,
            "corrupted": corrupted,
            "duplicated": duplicated,
            "5xx_for_temporary": five_for_temp,
            "accepted_then_tempfailed_injected": injected_atf,
            "backend_2xx_not_relayed": not_relayed,
            "half_close_sessions": half_closes,
            "half_close_replies_lost": owed_lost,
            "client_timeouts": timeouts,
            "descriptors_before": fds_before,
            "descriptors_after": fds_after,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
            "log_bad_lines": len(bad),
            "log_unhandled_errors": self.gateway.count_in_log("Unhandled error in Deferred"),
            "log_examples": bad[:5],
            "examples": {k: v[:5] for k, v in examples.items()},
            "invariants": invariants,
            "ok": all(invariants.values()),
        }


def report(figures: dict[str, Any]) -> str:
    """The figures as text, one per line."""
    lines = []
    for key, value in figures.items():
        if key == "invariants":
            for name, held in value.items():
                lines.append(f"invariant {name}: {'ok' if held else 'FAILED'}")
        else:
            text = json.dumps(value) if isinstance(value, dict | list) else value
            lines.append(f"{key}: {text}")
    return "\n".join(lines)


async def main(reactor: Any, argv: list[str]) -> None:
    args = parse_args(argv)
    print(f"seed: {args.seed}", flush=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    soak = Soak(reactor, args)
    figures = await soak.run()
    print(report(figures), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if not figures["ok"]:
        print(f"gateway log kept in {soak.gateway.log_path}", flush=True)
        raise SystemExit(1)
    if not args.directory:
        shutil.rmtree(soak.directory, ignore_errors=True)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
