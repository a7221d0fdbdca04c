"""The DATA stream: find end-of-data, refuse bare CR/LF, count the size, without per-line work.

The body is forwarded to the backend exactly as the client sent it (dot-stuffing included),
so the only things the gateway must know are where the message ends and whether it may pass.
A bare CR or LF is refused rather than normalised: a gateway and a backend that disagree about
line ends are how SMTP smuggling works, and refusing makes the disagreement impossible.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

END_OF_DATA = b"\r\n.\r\n"


class BodyFault(enum.Enum):
    """Why a message may not be forwarded."""

    BARE_NEWLINE = "bare CR or LF"
    TOO_BIG = "over the size limit"


@dataclass
class Chunk:
    """The result of feeding bytes to L{BodyScanner}.

    C{body} belongs to this message (up to and including the end-of-data marker once it is
    seen); C{rest} is what the client sent after the marker (pipelined commands), or C{None}
    while the message goes on.
    """

    body: bytes
    rest: bytes | None


ScanFunction = Callable[[bytes, bool], tuple[int, bool, bool]]


def scan_python(data: bytes, pending_cr: bool) -> tuple[int, bool, bool]:
    """Scan one chunk: where the first end-of-data marker in it ends, and bare CR or LF before.

    The reference for the optional C version (C{relaygate.smtp._scan.scan}), which must give
    the same answer for every input. Only C library calls touch the data: one C{find} for the
    marker and one C{replace} that blanks every CRLF, after which a bare CR or LF is a byte
    that C{find} (memchr) looks for and, in a good message, does not find. Three C{count}
    passes did the same in about twice the time.

    @param pending_cr: the previous chunk ended with a CR that this chunk's first byte decides.
    @return: C{(end, bare, pending_cr)}: the offset just past the first marker that lies wholly
        in C{data} (-1 if none); whether the bytes up to there hold a bare CR or LF; whether they
        end with a CR that the next chunk decides (always false when bare).
    """
    if not data:
        return -1, False, pending_cr
    at = data.find(END_OF_DATA)
    end = -1 if at < 0 else at + len(END_OF_DATA)
    body = data if end < 0 else data[:end]
    start = 0
    bare = False
    if pending_cr:
        if body[0] == 0x0A:
            start = 1
        else:
            bare = True
    # Same-length blanks keep the offsets; what is left of CR and LF is bare, except a CR at
    # the very end, which the next chunk's first byte may complete.
    blanked = body.replace(b"\r\n", b"  ")
    last = len(body) - 1
    if blanked.find(b"\n", start) >= 0:
        bare = True
    cr = blanked.find(b"\r", start)
    if 0 <= cr < last:
        bare = True
    return end, bare, not bare and cr == last


def _best_scan() -> ScanFunction:
    """The C scanner when it was built (setup.py, with a C compiler), else L{scan_python}."""
    try:
        from relaygate.smtp._scan import scan
    except ImportError:
        return scan_python
    return scan


scan: Final[ScanFunction] = _best_scan()


class BodyScanner:
    """Scan one message's wire bytes chunk by chunk.

    One L{scan} per chunk finds the end and any bare CR or LF; the size is kept in Python. The
    verdict is the same however the bytes are cut into chunks: a bare CR or LF anywhere in the
    message wins over the size (so a message over the limit is still told apart from a
    smuggling attempt), and the size counts the message up to the CRLF before the final dot,
    whether or not that dot has arrived yet.
    """

    def __init__(self, max_size: int, scan_chunk: ScanFunction = scan) -> None:
        self.max_size = max_size
        self.size = 0
        self.fault: BodyFault | None = None
        self._scan = scan_chunk
        # The last bytes seen, to find a marker split across chunks. A message starts at the
        # beginning of a line: as if CRLF had just been seen (so ".\r\n" alone ends it).
        self._tail = b"\r\n"
        self._pending_cr = False

    def feed(self, data: bytes) -> Chunk:
        """Consume C{data}; return this message's part of it and, at the end, what follows."""
        # A marker that starts in the last chunk's tail ends within the first 4 bytes here.
        head = self._tail + data[:4]
        at = head.find(END_OF_DATA)
        if at >= 0:
            end = at + len(END_OF_DATA) - len(self._tail)
            bare, pending = self._scan(data[:end], self._pending_cr)[1:]
        else:
            end, bare, pending = self._scan(data, self._pending_cr)
        if end < 0:
            body, rest = data, None
        else:
            body, rest = data[:end], data[end:]
        self._tail = (self._tail + body[-4:])[-4:]
        self._pending_cr = pending
        self.size += len(body)
        if bare:
            self.fault = BodyFault.BARE_NEWLINE
        elif self.fault is None and self._message_size(rest is not None) > self.max_size:
            self.fault = BodyFault.TOO_BIG
        return Chunk(body, rest)

    def _message_size(self, ended: bool) -> int:
        """The size so far, without the final ".CRLF" nor any part of it that may be one."""
        if ended:
            return self.size - 3
        # A stream that ends with CRLF "." or CRLF "." CR may be about to end: those bytes
        # would then be the marker, not the message. Counting them now would make the verdict
        # depend on where a read happened to stop.
        tail = self._tail
        if tail.endswith(b"\r\n."):
            return self.size - 1
        if tail == b"\r\n.\r":
            return self.size - 2
        return self.size
