"""The fuzz run's inputs: mutated valid sessions, random bytes and broken TLS ClientHellos.

Each input (L{Case}) is drawn from a C{random.Random} and says which listener to hit, how to
start (plaintext, a real TLS handshake, STARTTLS first, or a garbage or partial ClientHello),
the bytes to send in which chunks, and how to leave (close, reset, half-close, or read first).
"""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass

SESSIONS: dict[str, list[bytes]] = {
    "smtp": [
        b"EHLO fuzz.test",
        b"HELO fuzz.test",
        b"MAIL FROM:<a@fuzz.test> SIZE=120",
        b"RCPT TO:<b@dest.test>",
        b"RCPT TO:<c@dest.test> NOTIFY=NEVER",
        b"DATA",
        b"Subject: fuzz\r\n\r\nbody line\r\n..dot line\r\n.",
        b"RSET",
        b"NOOP",
        b"VRFY postmaster",
        b"HELP",
        b"AUTH PLAIN AHVzZXIAc2VjcmV0",
        b"BDAT 10 LAST",
        b"XCLIENT ADDR=1.2.3.4",
        b"QUIT",
    ],
    "imap": [
        b"a1 CAPABILITY",
        b'a2 ID ("name" "fuzz")',
        b"a3 NOOP",
        b'a4 LOGIN "user@x.test" "se\\"cret"',
        b"a5 AUTHENTICATE PLAIN AHVzZXJAeC50ZXN0AHNlY3JldA==",
        b"a6 AUTHENTICATE LOGIN",
        b"dXNlckB4LnRlc3Q=",
        b"a7 LOGIN {11}\r\nuser@x.test {6+}\r\nsecret",
        b"a8 SELECT INBOX",
        b"a9 FETCH 1:* (FLAGS)",
        b"a10 LOGOUT",
    ],
    "pop3": [
        b"CAPA",
        b"USER user@x.test",
        b"PASS secret word",
        b"AUTH PLAIN AHVzZXJAeC50ZXN0AHNlY3JldA==",
        b"AUTH LOGIN",
        b"dXNlckB4LnRlc3Q=",
        b"APOP user@x.test 0123456789abcdef0123456789abcdef",
        b"STAT",
        b"LIST",
        b"RETR 1",
        b"NOOP",
        b"QUIT",
    ],
}
STARTTLS = {
    "smtp": b"EHLO fuzz.test\r\nSTARTTLS\r\n",
    "imap": b"s STARTTLS\r\n",
    "pop3": b"STLS\r\n",
}


@dataclass
class Case:
    """One fuzz input."""

    protocol: str
    tls: str  # the listener's mode: none | starttls | implicit
    start: str  # plain | tls | starttls | starttls_garbage | garbage_hello | partial_hello
    chunks: list[bytes]
    ending: str  # close | abort | half_close | read | flood
    mutations: list[str]


def client_hellos(count: int = 4) -> list[bytes]:
    """Real TLS ClientHellos (from Python's ssl in memory), to truncate and mutate."""
    hellos = []
    for i in range(count):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if i % 2:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hellos.append(outgoing.read())
    return hellos


def _mutate(rng: random.Random, data: bytes, names: list[str]) -> bytes:
    """Apply one random mutation to DATA and append its name to NAMES."""
    buf = bytearray(data)
    kind = rng.choice(
        ["bitflip", "truncate", "huge_line", "inject", "duplicate", "delete", "random_line"]
    )
    names.append(kind)
    pos = rng.randrange(len(buf) + 1)
    if kind == "bitflip" and buf:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[pos:]
    elif kind == "huge_line":
        filler = rng.choice([b"A", b"x" * 7 + b" ", b"{99999}", b"\xff"])
        size = rng.choice([1000, 2100, 9000, 70_000, 300_000])
        buf[pos:pos] = (filler * (size // len(filler) + 1))[:size] + rng.choice([b"\r\n", b""])
    elif kind == "inject":
        for _ in range(rng.randint(1, 5)):
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.choice([b"\r", b"\n", b"\0", b"\r\n", b"\r\n.\r\n", b"\n.\n"])
    elif kind == "duplicate" and buf:
        start = rng.randrange(len(buf))
        piece = buf[start : start + rng.randint(1, 400)]
        buf[pos:pos] = piece * rng.randint(1, 30)
    elif kind == "delete" and buf:
        del buf[pos : pos + rng.randint(1, 40)]
    elif kind == "random_line":
        buf[pos:pos] = rng.randbytes(rng.randint(1, 200)) + b"\r\n"
    return bytes(buf)


def _session(rng: random.Random, protocol: str) -> bytes:
    """A plausible session: some of the protocol's commands, in mostly the usual order."""
    lines = SESSIONS[protocol]
    chosen = sorted(rng.sample(range(len(lines)), rng.randint(1, len(lines))))
    if rng.random() < 0.2:
        rng.shuffle(chosen)
    return b"".join(lines[i] + b"\r\n" for i in chosen)


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """DATA split at random places (random pipelining), or in one piece."""
    if not data or rng.random() < 0.4:
        return [data]
    cuts = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 8)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


FLOOD_LINES = {"smtp": b"NOOP\r\n", "imap": b"f NOOP\r\n", "pop3": b"NOOP\r\n"}


def make_case(
    rng: random.Random, protocol: str, tls: str, hellos: list[bytes], flood_rate: float = 0.01
) -> Case:
    """One input for a listener of PROTOCOL with TLS mode TLS."""
    names: list[str] = []
    if tls == "none" and rng.random() < flood_rate:
        # A client that pipelines valid commands and never reads the replies (issue 11,
        # defect 1): the gateway must stop reading it rather than queue replies without bound.
        count = rng.choice([50_000, 200_000])
        chunk = FLOOD_LINES[protocol] * 1000
        return Case(protocol, tls, "plain", [chunk] * (count // 1000), "flood", ["flood"])
    if rng.random() < 0.1:
        payload = rng.randbytes(rng.randint(1, 4096))
        names.append("random_bytes")
    else:
        payload = _session(rng, protocol)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            payload = _mutate(rng, payload, names)
    start = "plain"
    if tls == "implicit":
        start = rng.choices(["tls", "garbage_hello", "partial_hello"], [6, 2, 2])[0]
    elif tls == "starttls":
        start = rng.choices(["plain", "starttls", "starttls_garbage"], [5, 3, 2])[0]
    if start in ("garbage_hello", "partial_hello", "starttls_garbage"):
        hello = rng.choice(hellos)
        if start == "garbage_hello" or rng.random() < 0.3:
            hello = b"\x16\x03\x01" + rng.randbytes(rng.randint(0, 600))
        else:
            hello = hello[: rng.randrange(1, len(hello))]
            if rng.random() < 0.5:
                hello = _mutate(rng, hello, names)
        payload = hello + (payload if rng.random() < 0.3 else b"")
    ending = rng.choices(["close", "abort", "half_close", "read"], [3, 2, 2, 3])[0]
    return Case(protocol, tls, start, _chunks(rng, payload), ending, names)
