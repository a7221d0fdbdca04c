"""The SASL exchanges of SMTP AUTH (RFC 4954) at the front: PLAIN, LOGIN, CRAM-MD5, EXTERNAL.

Each exchange is a small state machine without I/O: L{start} takes the AUTH command's
mechanism and optional initial response and returns the first L{Step}; L{SASLExchange.respond}
takes each continuation line and returns the next. The front sends challenges as
C{334 <base64>} and, on L{Credentials}, asks the router. Written here, not with
L{twisted.mail.smtp}'s C{IChallengeResponse} classes, because those check a password locally;
a gateway only collects the credentials and passes them to the auth service, as nginx's
C{ngx_mail_auth_*} functions do (C{src/mail/ngx_mail_parse.c}, C{ngx_mail_handler.c}).
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass
from typing import Final

from relaygate.smtp.replies import Reply

MECHANISMS: Final = {"PLAIN": "plain", "LOGIN": "login", "CRAM-MD5": "cram-md5"}
"""AUTH mechanism names (as clients send them) to nginx's C{Auth-Method} names; EXTERNAL apart."""

# RFC 4954 section 4: "*" cancels the exchange, "=" is an empty initial response.
_CANCEL: Final = b"*"
_EMPTY: Final = b"="
# Longer identities are refused: they would not fit a backend's command line (XCLIENT LOGIN=,
# RFC 5321's 512 octets) and no real login needs them. Passwords get more room (tokens).
MAX_USER: Final = 255
MAX_PASSWORD: Final = 1024

R_AUTH_OK = Reply(235, (b"2.7.0 Authentication successful",))
R_AUTH_CANCELLED = Reply(501, (b"5.7.0 Authentication aborted",))
R_AUTH_MALFORMED = Reply(501, (b"5.5.2 Cannot decode response",))
R_AUTH_TOO_LONG = Reply(500, (b"5.5.6 Authentication exchange line is too long",))
R_AUTH_SYNTAX = Reply(501, (b"5.5.4 Syntax: AUTH mechanism [initial-response]",))
R_AUTH_UNKNOWN = Reply(504, (b"5.5.4 Unrecognized authentication type",))
R_AUTH_TWICE = Reply(503, (b"5.5.1 Error: already authenticated",))
R_AUTH_IN_TRANSACTION = Reply(503, (b"5.5.1 Error: MAIL transaction in progress",))
R_AUTH_NEED_EHLO = Reply(503, (b"5.5.1 Error: send EHLO first",))
R_AUTH_REQUIRED = Reply(530, (b"5.7.0 Authentication required",))
R_AUTH_TEMPORARY = Reply(454, (b"4.7.0 Temporary authentication failure",))
R_AUTH_FAILED = Reply(535, (b"5.7.8 Authentication credentials invalid",))
R_AUTH_NO_CERTIFICATE = Reply(535, (b"5.7.8 No verified client certificate",))
R_AUTH_TOO_MANY = Reply(421, (b"4.7.0 Error: too many failed authentication attempts",))
R_BACKEND_LOGIN = Reply(451, (b"4.7.0 The mail server refused the login, try again later",))


@dataclass(frozen=True)
class Challenge:
    """Send C{334 base64(data)} and wait for the client's next line."""

    data: bytes

    def reply(self) -> Reply:
        """The 334 reply carrying this challenge."""
        return Reply(334, (base64.b64encode(self.data),))


@dataclass(frozen=True)
class Credentials:
    """The exchange is complete: what the client claimed, for the router (C{Auth-*} headers).

    C{method} is the mechanism as L{relaygate.routing.http} names it (LOGIN is sent to the
    auth service as C{plain}, as nginx does); C{salt} is CRAM-MD5's
    challenge; for C{external} the password is empty and the identity is the optional
    authorization identity the client gave.
    """

    method: str
    user: bytes
    password: bytes = b""
    salt: bytes = b""


class Failed(enum.Enum):
    """The exchange ended without credentials; the value names the reply."""

    CANCELLED = "cancelled"
    MALFORMED = "malformed"

    def reply(self) -> Reply:
        """The client's reply for this ending."""
        return R_AUTH_CANCELLED if self is Failed.CANCELLED else R_AUTH_MALFORMED


Step = Challenge | Credentials | Failed


def decode(line: bytes) -> bytes | None:
    """A client's base64 response, strictly decoded; C{None} when it is not base64."""
    if line == _EMPTY:
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return None


def _usable(value: bytes, limit: int = MAX_USER) -> bool:
    """An identity or password may not carry NUL, CR or LF, nor exceed C{limit} bytes."""
    return len(value) <= limit and not any(c in value for c in b"\0\r\n")


class SASLExchange:
    """One AUTH exchange in progress; feed each continuation line to L{respond}."""

    def __init__(self, mechanism: str, salt: bytes = b"") -> None:
        self.mechanism = mechanism
        self._salt = salt
        self._user: bytes | None = None

    def first(self, initial: bytes | None) -> Step:
        """The first step, given the AUTH command's initial response (C{None} when absent)."""
        if self.mechanism == "cram-md5":
            if initial is not None:
                # RFC 2195: the server speaks first, so an initial response is a protocol error.
                return Failed.MALFORMED
            return Challenge(self._salt)
        if initial is None:
            # PLAIN and EXTERNAL: an empty challenge asks for the response; LOGIN asks the user.
            return Challenge(b"Username:" if self.mechanism == "login" else b"")
        return self.respond(initial)

    def respond(self, line: bytes) -> Step:
        """The next step after the client's line C{line} (a 334 response)."""
        if line.strip() == _CANCEL:
            return Failed.CANCELLED
        decoded = decode(line.strip())
        if decoded is None:
            return Failed.MALFORMED
        if self.mechanism == "plain":
            return _plain(decoded)
        if self.mechanism == "login":
            if self._user is None:
                if not decoded or not _usable(decoded):
                    return Failed.MALFORMED
                self._user = decoded
                return Challenge(b"Password:")
            if not _usable(decoded, MAX_PASSWORD):
                return Failed.MALFORMED
            return Credentials("login", self._user, decoded)
        if self.mechanism == "cram-md5":
            user, _, digest = decoded.rpartition(b" ")
            if not user or not _usable(user) or len(digest) != 32:
                return Failed.MALFORMED
            if not all(c in b"0123456789abcdefABCDEF" for c in digest):
                return Failed.MALFORMED
            return Credentials("cram-md5", user, digest.lower(), self._salt)
        # EXTERNAL: the response is the authorization identity, often empty (RFC 4422 App. A).
        if not _usable(decoded):
            return Failed.MALFORMED
        return Credentials("external", decoded)


def _plain(decoded: bytes) -> Step:
    """RFC 4616: C{authzid NUL authcid NUL passwd}; the authcid is who logs in."""
    parts = decoded.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        return Failed.MALFORMED
    _authzid, user, password = parts
    if not _usable(user) or not _usable(password, MAX_PASSWORD):
        return Failed.MALFORMED
    return Credentials("plain", user, password)


def parse_auth_command(rest: bytes) -> tuple[str, bytes | None] | None:
    """Split C{AUTH}'s argument into the mechanism (upper-cased) and the initial response.

    @return: C{None} when the argument is not C{mechanism [initial-response]}.
    """
    parts = rest.split()
    if not 1 <= len(parts) <= 2:
        return None
    name = parts[0].upper()
    if not all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_" for c in name):
        return None
    return name.decode("ascii"), parts[1] if len(parts) == 2 else None


def mechanism_names(methods: tuple[str, ...]) -> list[bytes]:
    """The AUTH keywords for the configured C{[smtp] auth} methods, in the configured order."""
    names = {value: key for key, value in MECHANISMS.items()}
    names["external"] = "EXTERNAL"
    return [names[method].encode("ascii") for method in methods if method in names]


def backend_plain(user: bytes, password: bytes) -> bytes:
    """The C{AUTH PLAIN} command that logs C{user} in at a backend."""
    return b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + password)


def refusal(message: str, error_code: str) -> Reply:
    """The client's reply for a router's refusal of a login: C{535 5.7.8 <message>} by default.

    C{error_code} is nginx's C{Auth-Error-Code} (e.g. C{"550 5.7.1"}), which replaces the code.
    """
    text = "".join(" " if c in "\r\n\0" else c for c in message).encode("utf-8", "replace")
    code, _, enhanced = error_code.strip().partition(" ")
    if not (len(code) == 3 and code.isdigit() and code[0] in "45"):
        code, enhanced = "535", "5.7.8"
    prefix = (enhanced.strip() + " ").encode("ascii", "replace") if enhanced.strip() else b""
    return Reply(int(code), (prefix + text,))
