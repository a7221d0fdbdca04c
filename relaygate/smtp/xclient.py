"""Postfix's XCLIENT: tell a backend who the real client is (www.postfix.org/XCLIENT_README).

A value is never cut to fit a command line: cut xtext is invalid, or names someone else (a
login cut after C{+3D} is a shorter, different login). A value that cannot fit is sent as
C{[UNAVAILABLE]} where "not known" is true and harmless (C{HELO}, C{NAME}), and otherwise the
backend cannot be told: L{XClientTooLong}.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from relaygate.smtp.replies import Reply

# RFC 5321 section 4.5.3.1.4 caps a command line at 512 octets with its CRLF; XCLIENT lines
# must fit too (XCLIENT_README: "The client must not send XCLIENT commands that exceed the
# 512 character limit").
MAX_XCLIENT_LINE: Final = 510
_VERB: Final = b"XCLIENT"
# The longest one attribute (NAME=xtext) may be: alone on its own line.
MAX_ATTRIBUTE: Final = MAX_XCLIENT_LINE - len(_VERB) - 1
# XCLIENT_README, note 1: NAME and HELO values may be up to 255 characters long; Postfix's
# smtpd answers a longer HELO value with 501, which would lose the whole session.
MAX_HOSTNAME: Final = 255
UNAVAILABLE: Final = b"[UNAVAILABLE]"
# Attributes that may honestly say "not known" when their value cannot be sent. Never LOGIN:
# for a backend, no login means an anonymous client, which is not who authenticated.
_MAY_BE_UNAVAILABLE: Final = frozenset({b"NAME", b"REVERSE_NAME", b"HELO"})
_HOSTNAMES: Final = frozenset({b"NAME", b"REVERSE_NAME", b"HELO"})

R_XCLIENT_TOO_LONG: Final = Reply(
    451, (b"4.7.0 Your login is too long to pass on to the mail server",)
)

_XTEXT: Final = re.compile(rb"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")


class XClientTooLong(Exception):
    """An attribute that must reach the backend (LOGIN) cannot fit an XCLIENT command line.

    The transaction must not go on without it: the caller answers L{R_XCLIENT_TOO_LONG}.
    """

    def __init__(self, name: bytes, encoded_length: int) -> None:
        super().__init__(
            f"XCLIENT {name.decode('ascii', 'replace')} is {encoded_length} octets as xtext,"
            f" over the {MAX_ATTRIBUTE} a command line holds"
        )
        self.name = name
        self.encoded_length = encoded_length


def xtext(value: bytes) -> bytes:
    """Encode C{value} as RFC 1891 (RFC 3461) xtext: C{+HH} for bytes outside 33-126, C{+}, C{=}.

    Written here because L{twisted.mail.smtp.xtext_encode} compares each byte with the str
    C{"+"} on Python 3, so it never escapes C{+} or C{=}, which XCLIENT values must not carry raw.
    """
    return b"".join(
        b"+%02X" % byte if byte < 33 or byte > 126 or byte in b"+=" else bytes((byte,))
        for byte in value
    )


def xtext_decode(encoded: bytes) -> bytes:
    """Decode RFC 1891 xtext, strictly (uppercase hex, no raw C{+} or C{=}).

    Written here because L{twisted.mail.smtp.xtext_decode} returns text and accepts anything.

    @raise ValueError: C{encoded} is not valid xtext.
    """
    if _XTEXT.fullmatch(encoded) is None:
        raise ValueError(f"not xtext: {encoded!r}")
    return re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes((int(m.group(1), 16),)), encoded)


def _attribute(name: bytes, value: bytes) -> bytes:
    """C{NAME=xtext}, or C{NAME=[UNAVAILABLE]} when that is safe and the value cannot go.

    @raise XClientTooLong: the value cannot go, and must.
    """
    part = name + b"=" + xtext(value)
    too_long = len(part) > MAX_ATTRIBUTE or (
        name.upper() in _HOSTNAMES and len(value) > MAX_HOSTNAME
    )
    if not too_long:
        return part
    if name.upper() in _MAY_BE_UNAVAILABLE:
        return name + b"=" + UNAVAILABLE
    raise XClientTooLong(name, len(part))


def xclient_commands(offered: bytes, attributes: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The XCLIENT command lines that carry C{attributes} the backend offered, each < 512 octets.

    Every attribute is checked before any line is made, so a caller that gets
    L{XClientTooLong} has sent nothing.

    @param offered: the parameters of the backend's C{250-XCLIENT} EHLO line (attribute names).
    @param attributes: (name, raw value) pairs, in the order to send them.
    @raise XClientTooLong: an attribute that must be told (LOGIN) cannot fit a line.
    """
    names = {name.upper() for name in offered.split()}
    parts = [_attribute(name, value) for name, value in attributes if name.upper() in names]
    commands: list[bytes] = []
    line = _VERB
    for part in parts:
        if len(line) + 1 + len(part) > MAX_XCLIENT_LINE:
            commands.append(line)
            line = _VERB
        line += b" " + part
    if line != _VERB:
        commands.append(line)
    return commands
