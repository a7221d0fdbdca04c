"""The DATA stream: find end-of-data, refuse bare CR/LF, count the size, without per-line work.

The body is forwarded to the backend exactly as the client sent it (dot-stuffing included),
so the only things the gateway must know are where the message ends and whether it may pass.
A bare CR or LF is refused rather than normalised: a gateway and a backend that disagree about
line ends are how SMTP smuggling works, and refusing makes the disagreement impossible.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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


class BodyScanner:
    """Scan one message's wire bytes chunk by chunk.

    Only C library calls (C{find}, C{count}) touch the data, so the cost per chunk is a few
    passes over it in C, whatever the number of lines.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.fault: BodyFault | None = None
        # The last bytes seen, to find a marker split across chunks. A message starts at the
        # beginning of a line: as if CRLF had just been seen (so ".\r\n" alone ends it).
        self._tail = b"\r\n"
        self._pending_cr = False

    def feed(self, data: bytes) -> Chunk:
        """Consume C{data}; return this message's part of it and, at the end, what follows."""
        end = self._find_end(data)
        body, rest = (data, None) if end < 0 else (data[:end], data[end:])
        self._tail = (self._tail + body[-4:])[-4:]
        self.size += len(body)
        if self.fault is None:
            if self._has_bare_newline(body):
                self.fault = BodyFault.BARE_NEWLINE
            elif self.size - (0 if rest is None else 3) > self.max_size:
                self.fault = BodyFault.TOO_BIG
        return Chunk(body, rest)

    def _find_end(self, data: bytes) -> int:
        """The offset just past the end-of-data marker in C{data}, or -1."""
        head = self._tail + data[:4]
        at = head.find(END_OF_DATA)
        if at >= 0:
            return at + len(END_OF_DATA) - len(self._tail)
        at = data.find(END_OF_DATA)
        return -1 if at < 0 else at + len(END_OF_DATA)

    def _has_bare_newline(self, body: bytes) -> bool:
        """True if C{body} (after a CR that ended the last chunk, if any) has a bare CR/LF."""
        text = b"\r" + body if self._pending_cr else body
        self._pending_cr = text.endswith(b"\r")
        crlf = text.count(b"\r\n")
        # A CR at the very end may still be followed by LF in the next chunk: judge it then.
        cr = text.count(b"\r") - (1 if self._pending_cr else 0)
        return text.count(b"\n") != crlf or cr != crlf
