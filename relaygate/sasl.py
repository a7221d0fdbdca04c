"""SASL at the fronts, without I/O: one set of rules for SMTP AUTH, IMAP AUTHENTICATE, POP3 AUTH.

PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195) and EXTERNAL (RFC 4422 appendix A). Each exchange
is a small state machine: L{SASLExchange.first} takes the command's optional initial response
and returns the first L{Step}; L{SASLExchange.respond} takes each continuation line and returns
the next. The front only frames: SMTP sends a L{Challenge} as C{334 <base64>}, IMAP and POP3 as
C{+ <base64>}; on L{Credentials} it asks the router; on L{Failed} it answers with its own error.

Every identity and password that comes out of here was strictly base64-decoded and carries no
NUL, CR or LF (DESIGN rule 6) and fits L{MAX_USER} / L{MAX_PASSWORD}.

Written here, not with L{twisted.mail.smtp}'s C{IChallengeResponse} classes or
L{twisted.mail.imap4}'s, because those check a password locally; a gateway only collects the
credentials and passes them to the auth service, as nginx's C{ngx_mail_auth_*} functions do
(C{src/mail/ngx_mail_parse.c}, C{ngx_mail_handler.c}).
"""

from __future__ import annotations

import base64
import binascii
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from twisted.internet.interfaces import IReactorTime

MECHANISMS: Final = {
    "PLAIN": "plain",
    "LOGIN": "login",
    "CRAM-MD5": "cram-md5",
    "EXTERNAL": "external",
}
"""Mechanism names (as clients send them, upper-cased) to nginx's C{Auth-Method} names."""

# RFC 4954 section 4 (and RFC 3501 6.2.2, RFC 5034 4): "*" cancels, "=" is an empty response.
_CANCEL: Final = b"*"
_EMPTY: Final = b"="
# Longer identities are refused: they would not fit a backend's command line (XCLIENT LOGIN=,
# RFC 5321's 512 octets) and no real login needs them. Passwords get more room (tokens).
MAX_USER: Final = 255
MAX_PASSWORD: Final = 1024


@dataclass(frozen=True)
class Challenge:
    """Send C{data} (base64-encoded by L{encoded}) and wait for the client's next line."""

    data: bytes

    def encoded(self) -> bytes:
        """The challenge as it goes on the wire after C{334 } or C{+ }."""
        return base64.b64encode(self.data)


@dataclass(frozen=True)
class Credentials:
    """A login as the client gave it, for the router (C{Auth-*} headers).

    C{method} is the mechanism as L{relaygate.routing.http} names it (LOGIN and USER/PASS are
    sent to the auth service as C{plain}, as nginx does); C{salt} is APOP's or CRAM-MD5's
    challenge; for C{external} the password is empty and the identity is the optional
    authorization identity the client gave.
    """

    method: str
    user: bytes
    password: bytes = b""
    salt: bytes = b""


class Failed(enum.Enum):
    """The exchange ended without credentials; each front has its reply for each ending."""

    CANCELLED = "cancelled"
    MALFORMED = "malformed"


Step = Challenge | Credentials | Failed


def decode(line: bytes) -> bytes | None:
    """A client's base64 response, strictly decoded; C{None} when it is not base64.

    Strict means canonical too (RFC 4648 section 3.5): C{/AB=} has pad bits set and would
    decode to the same bytes as C{/AA=}, so one response would have two spellings.
    """
    if line == _EMPTY:
        return b""
    try:
        decoded = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if base64.b64encode(decoded) == line else None


def usable(value: bytes, limit: int = MAX_USER) -> bool:
    """An identity or password may not carry NUL, CR or LF, nor exceed C{limit} bytes.

    For the front's own command arguments too (IMAP LOGIN, POP3 USER/PASS/APOP), so a login
    is held to the same rules whichever way it came.
    """
    return len(value) <= limit and not any(c in value for c in b"\0\r\n")


class SASLExchange:
    """One exchange in progress; feed each continuation line to L{respond}."""

    def __init__(self, mechanism: str, salt: bytes = b"", external_prompt: bytes = b"") -> None:
        """@param mechanism: the method's name (a value of L{MECHANISMS}).
        @param salt: CRAM-MD5's challenge (L{make_salt}).
        @param external_prompt: EXTERNAL's challenge when the client sent no initial response:
            empty as RFC 4422 has it (SMTP), or C{Username:} as nginx's IMAP and POP3 send."""
        self.mechanism = mechanism
        self._salt = salt
        self._external_prompt = external_prompt
        self._user: bytes | None = None

    def first(self, initial: bytes | None) -> Step:
        """The first step, given the command's initial response (C{None} when absent)."""
        if self.mechanism == "cram-md5":
            if initial is not None:
                # RFC 2195: the server speaks first, so an initial response is a protocol error.
                return Failed.MALFORMED
            return Challenge(self._salt)
        if initial is None:
            # PLAIN: an empty challenge asks for the response; LOGIN asks the user.
            if self.mechanism == "login":
                return Challenge(b"Username:")
            return Challenge(self._external_prompt if self.mechanism == "external" else b"")
        return self.respond(initial)

    def respond(self, line: bytes) -> Step:
        """The next step after the client's continuation line C{line}."""
        if line.strip() == _CANCEL:
            return Failed.CANCELLED
        decoded = decode(line.strip())
        if decoded is None:
            return Failed.MALFORMED
        if self.mechanism == "plain":
            return _plain(decoded)
        if self.mechanism == "login":
            if self._user is None:
                if not decoded or not usable(decoded):
                    return Failed.MALFORMED
                self._user = decoded
                return Challenge(b"Password:")
            if not usable(decoded, MAX_PASSWORD):
                return Failed.MALFORMED
            return Credentials("login", self._user, decoded)
        if self.mechanism == "cram-md5":
            user, _, digest = decoded.rpartition(b" ")
            if not user or not usable(user) or len(digest) != 32:
                return Failed.MALFORMED
            if not all(c in b"0123456789abcdefABCDEF" for c in digest):
                return Failed.MALFORMED
            return Credentials("cram-md5", user, digest.lower(), self._salt)
        # EXTERNAL: the response is the authorization identity, often empty (RFC 4422 App. A).
        if not usable(decoded):
            return Failed.MALFORMED
        return Credentials("external", decoded)


def _plain(decoded: bytes) -> Step:
    """RFC 4616: C{authzid NUL authcid NUL passwd}; the authcid is who logs in."""
    parts = decoded.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        return Failed.MALFORMED
    _authzid, user, password = parts
    if not usable(user) or not usable(password, MAX_PASSWORD):
        return Failed.MALFORMED
    return Credentials("plain", user, password)


def parse_auth_command(rest: bytes) -> tuple[str, bytes | None] | None:
    """Split an AUTH command's argument into the mechanism (upper-cased) and initial response.

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
    """The mechanism keywords for the configured C{auth} methods, in the configured order."""
    names = {value: key for key, value in MECHANISMS.items()}
    return [names[method].encode("ascii") for method in methods if method in names]


def encode_plain(user: bytes, password: bytes) -> bytes:
    """A SASL PLAIN initial response for C{user}, base64-encoded (to log in at a backend)."""
    return base64.b64encode(b"\0" + user + b"\0" + password)


def make_salt(name: str, clock: IReactorTime, random: Callable[[], int] | None = None) -> bytes:
    """An APOP/CRAM-MD5 challenge in nginx's format, C{<random.time@name>}."""
    number = random() if random is not None else secrets.randbits(63)
    return b"<%d.%d@%s>" % (number, int(clock.seconds()), name.encode("ascii", "replace"))
