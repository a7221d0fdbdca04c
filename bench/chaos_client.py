"""The soak's clients: MTA-like SMTP sessions with pipelining, retries, messages made from a seed.

A message's bytes are a function of the run's seed and its number (L{message_content}), so they
are made again for each attempt instead of being kept in memory; only their SHA-256 is kept.
Each session is one of:

- C{normal}: EHLO, then per message MAIL, RCPT and DATA pipelined in one write, the body, and
  the final reply; a few messages per connection, then QUIT;
- C{half_close}: one message whose body, dot and QUIT go in one write followed by a shutdown of
  the sending side (C{shutdown(SHUT_WR)}), then reading the replies it is owed (RFC 5321 4.1.1.10:
  QUIT is answered before the server closes);
- C{abandon}: MAIL and RCPT pipelined; once MAIL is answered, and while RCPT waits on the
  backend, the connection is reset without waiting for more.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

REPLY_TIMEOUT = 30.0


def message_size(seed: int, number: int, max_size: int) -> int:
    """Log-uniform between 1 KiB and MAX_SIZE: mostly small messages, some near the top."""
    rng = random.Random(f"{seed}:size:{number}")
    low, high = 1024, max(max_size, 1024)
    return int(low * (high / low) ** rng.random())


def message_content(seed: int, number: int, max_size: int) -> bytes:
    """The message's bytes: headers with a unique Message-ID, then base64 lines, some dotted."""
    size = message_size(seed, number, max_size)
    rng = random.Random(f"{seed}:body:{number}")
    head = (
        f"Message-ID: <m{number}.s{seed}@chaos.test>\r\n"
        f"From: <sender@client.test>\r\nTo: <user{number % 50}@dest.test>\r\n"
        f"Subject: chaos message {number}\r\n\r\n"
    ).encode()
    raw = base64.b64encode(rng.randbytes(max(size - len(head), 60) * 3 // 4))
    lines = [raw[i : i + 76] for i in range(0, len(raw), 76)]
    for i in range(0, len(lines), 37):
        # A leading dot must be stuffed on the wire and unstuffed by the backend.
        lines[i] = b"." + lines[i]
    return head + b"\r\n".join(lines) + b"\r\n"


def stuffed(content: bytes) -> bytes:
    """CONTENT as DATA sends it: dots stuffed (RFC 5321 4.5.2), then the terminating dot."""
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@dataclass
class Message:
    """One message the clients must get accepted (or refused) for good."""

    number: int
    sha256: str
    size: int
    attempts: int = 0
    state: str = "pending"  # pending | delivered | bounced | gave_up | unfinished
    delivered_tag: str = ""
    due: float = 0.0


@dataclass
class Attempt:
    """One try at one message: its tag and the replies the client saw."""

    tag: str
    message: int
    behaviour: str
    codes: dict[str, int] = field(default_factory=dict)
    result: str = ""  # 2xx | 4xx | 5xx | lost_connection | timeout | abandoned
    owed_lost: bool = False
    """A half-closing client got EOF before the replies to the commands it sent."""


class ClientLost(Exception):
    """The gateway closed the connection before the reply came."""


class ReplyTimeout(Exception):
    """The gateway did not reply within L{REPLY_TIMEOUT}."""


class SMTPClient(Protocol):
    """Sends what it is told; hands out replies (multi-line ones joined) in order."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._buffer = b""
        self._lines: list[bytes] = []
        self._replies: list[int] = []
        self._waiters: list[Deferred[int]] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            if len(line) >= 4 and line[3:4] == b"-":
                self._lines.append(line)
                continue
            self._lines = []
            try:
                code = int(line[:3])
            except ValueError:
                code = 0
            if self._waiters:
                self._waiters.pop(0).callback(code)
            else:
                self._replies.append(code)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(ClientLost())

    def reply(self) -> Deferred[int]:
        """The next reply's code (fails with L{ClientLost} or L{ReplyTimeout})."""
        if self._replies:
            d: Deferred[int] = Deferred()
            d.callback(self._replies.pop(0))
            return d
        if self.lost:
            lost: Deferred[int] = Deferred()
            lost.errback(ClientLost())
            return lost
        waiter: Deferred[int] = Deferred()
        self._waiters.append(waiter)

        def timed_out(result: Any, timeout: float) -> Any:
            raise ReplyTimeout()

        return waiter.addTimeout(REPLY_TIMEOUT, self.reactor, onTimeoutCancel=timed_out)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)


async def run_session(
    reactor: Any,
    port: int,
    seed: int,
    max_size: int,
    messages: list[Message],
    behaviour: str,
    attempts: list[Attempt],
) -> None:
    """One client connection that tries to send MESSAGES; appends one L{Attempt} per message."""
    tries = []
    for message in messages:
        message.attempts += 1
        suffix = "-x" if behaviour == "abandon" else ""
        tag = f"chaos-m{message.number}-a{message.attempts}{suffix}"
        if message.number < 0:
            tag = f"chaos-warm{-message.number}-a{message.attempts}"
        tries.append(Attempt(tag, message.number, behaviour))
    attempts.extend(tries)
    client = SMTPClient(reactor)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    try:
        await connectProtocol(endpoint, client)
    except Exception:
        for attempt in tries:
            attempt.result = "lost_connection"
        return
    current = tries[0]
    try:
        greeting = await client.reply()
        if greeting != 220:
            raise ClientLost()
        client.send(b"EHLO client.chaos.test\r\n")
        if await client.reply() != 250:
            raise ClientLost()
        for message, attempt in zip(messages, tries, strict=True):
            current = attempt
            await _one_message(client, seed, max_size, message, attempt, behaviour)
            if attempt.result == "abandoned":
                return
        if behaviour != "half_close":
            client.send(b"QUIT\r\n")
            await client.reply()
    except ClientLost:
        _failed(tries, current, "lost_connection", behaviour)
    except ReplyTimeout:
        _failed(tries, current, "timeout", behaviour)
    finally:
        if client.transport is not None and not client.lost:
            client.transport.loseConnection()


def _failed(tries: list[Attempt], current: Attempt, result: str, behaviour: str) -> None:
    """Mark the attempt in progress, and the ones not started, as failed with RESULT."""
    started = False
    for attempt in tries:
        started = started or attempt is current
        if started and not attempt.result:
            attempt.result = result
            if behaviour == "half_close" and result == "lost_connection":
                attempt.owed_lost = True


async def _one_message(
    client: SMTPClient,
    seed: int,
    max_size: int,
    message: Message,
    attempt: Attempt,
    behaviour: str,
) -> None:
    number = message.number
    rcpt = f"user{abs(number) % 50}@dest.test"
    client.send(
        f"MAIL FROM:<{attempt.tag}@client.test> SIZE={message.size}\r\n"
        f"RCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        if behaviour != "abandon"
        else f"MAIL FROM:<{attempt.tag}@client.test>\r\nRCPT TO:<{rcpt}>\r\n".encode()
    )
    if behaviour == "abandon":
        # Leave while RCPT waits on the router and the backend (the gateway answers MAIL).
        attempt.codes["mail"] = await client.reply()
        delay = random.Random(f"{seed}:abandon:{attempt.tag}").uniform(0.0, 0.1)
        await deferLater(client.reactor, delay, lambda: None)
        assert client.transport is not None
        client.transport.abortConnection()  # type: ignore[attr-defined]
        attempt.result = "abandoned"
        return
    attempt.codes["mail"] = await client.reply()
    attempt.codes["rcpt"] = await client.reply()
    attempt.codes["data"] = await client.reply()
    if attempt.codes["data"] != 354:
        worst = [c for c in (attempt.codes["mail"], attempt.codes["rcpt"]) if c >= 400]
        code = worst[0] if worst else attempt.codes["data"]
        attempt.result = f"{code // 100}xx"
        client.send(b"RSET\r\n")
        await client.reply()
        return
    body = stuffed(message_content(seed, number, max_size))
    if behaviour == "half_close":
        client.send(body + b"QUIT\r\n")
        assert client.transport is not None
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
    else:
        client.send(body)
    attempt.codes["final"] = code = await client.reply()
    attempt.result = f"{code // 100}xx"
    if behaviour == "half_close":
        try:
            attempt.codes["quit"] = await client.reply()
        except ClientLost:
            attempt.owed_lost = True
