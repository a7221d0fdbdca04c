"""The SMTP front's replies around AUTH (RFC 4954), and how SASL steps become SMTP replies.

The exchange itself is protocol-neutral (L{relaygate.sasl}); this is the SMTP framing of it.
"""

from __future__ import annotations

from relaygate.sasl import Challenge, encode_plain
from relaygate.smtp.replies import Reply
from relaygate.text import one_line

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


def challenge_reply(challenge: Challenge) -> Reply:
    """The C{334} reply carrying C{challenge}."""
    return Reply(334, (challenge.encoded(),))


def backend_plain(user: bytes, password: bytes) -> bytes:
    """The C{AUTH PLAIN} command that logs C{user} in at a backend."""
    return b"AUTH PLAIN " + encode_plain(user, password)


def auth_refusal(message: str, error_code: str) -> Reply:
    """The client's reply for a router's refusal of a login: C{535 5.7.8 <message>} by default.

    C{error_code} is nginx's C{Auth-Error-Code} (e.g. C{"550 5.7.1"}), which replaces the code.
    """
    text = one_line(message)
    code, _, enhanced = error_code.strip().partition(" ")
    if not (len(code) == 3 and code.isdigit() and code[0] in "45"):
        code, enhanced = "535", "5.7.8"
    prefix = (enhanced.strip() + " ").encode("ascii", "replace") if enhanced.strip() else b""
    return Reply(int(code), (prefix + text,))
