"""Client- and peer-supplied bytes made safe for log fields and for one reply line."""

from __future__ import annotations

_VISIBLE = bytes(range(33, 127))


def visible(value: bytes) -> bool:
    """True when C{value} is non-empty printable ASCII without spaces (a HELO name, say)."""
    return bool(value) and not value.translate(None, _VISIBLE)


def printable(value: bytes) -> str:
    """Client-supplied bytes as text for log fields (never for the format string)."""
    return value.decode("utf-8", "backslashreplace")


def one_line(text: str) -> bytes:
    """Router or backend text made safe to put in a single reply line (no CR, LF or NUL)."""
    cleaned = "".join(" " if c in "\r\n\0" else c for c in text)
    return cleaned.encode("utf-8", "replace")
