"""Postfix's XCLIENT: tell a backend who the real client is (www.postfix.org/XCLIENT_README)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# RFC 3461 caps an SMTP command line at 512 octets with its CRLF; XCLIENT lines must fit too.
MAX_XCLIENT_LINE = 510


def xtext(value: bytes) -> bytes:
    """Encode C{value} as RFC 3461 xtext.

    Written here because L{twisted.mail.smtp.xtext_encode} compares each byte with the str
    C{"+"} on Python 3, so it never escapes C{+} or C{=}, which XCLIENT values must not carry raw.
    """
    return b"".join(
        b"+%02X" % byte if byte < 33 or byte > 126 or byte in b"+=" else bytes((byte,))
        for byte in value
    )


def xclient_commands(offered: bytes, attributes: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The XCLIENT command lines that carry C{attributes} the backend offered, each < 512 octets.

    @param offered: the parameters of the backend's C{250-XCLIENT} EHLO line (attribute names).
    @param attributes: (name, raw value) pairs, in the order to send them.
    """
    names = {name.upper() for name in offered.split()}
    parts: Iterable[bytes] = (
        name + b"=" + xtext(value) for name, value in attributes if name.upper() in names
    )
    commands: list[bytes] = []
    line = b"XCLIENT"
    for part in parts:
        if len(line) + 1 + len(part) > MAX_XCLIENT_LINE and line != b"XCLIENT":
            commands.append(line)
            line = b"XCLIENT"
        line += b" " + part[: MAX_XCLIENT_LINE - len(b"XCLIENT ")]
    if line != b"XCLIENT":
        commands.append(line)
    return commands
