"""SMTP replies: the L{Reply} value, and the replies the SMTP front gives itself.

Texts follow Postfix and nginx where they have one. Every other reply a client sees is the
backend's own (docs/smtp.md lists both kinds). A leaf module: it imports nothing of relaygate's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and its text lines (without the code prefix)."""

    code: int
    lines: tuple[bytes, ...] = (b"",)

    @property
    def ok(self) -> bool:
        """True for a 2xx reply."""
        return 200 <= self.code < 300

    @property
    def text(self) -> bytes:
        """The lines joined with LF, as L{smtp.SMTP.sendCode} takes them."""
        return b"\n".join(self.lines)

    def to_wire(self) -> bytes:
        """The reply as sent on the wire: C{250-first}, ..., C{250 last}, CRLF after each."""
        if len(self.lines) == 1:
            # Nearly every reply of a session: one line, one formatting step.
            return b"%03d %s\r\n" % (self.code, self.lines[0])
        code = b"%03d" % self.code
        *first, last = self.lines
        return (
            b"".join(code + b"-" + line + b"\r\n" for line in first) + code + b" " + last + b"\r\n"
        )

    def summary(self) -> str:
        """The code and first line, for logs."""
        return f"{self.code} {self.lines[0].decode('utf-8', 'replace')}"


R_OK = Reply(250, (b"2.0.0 Ok",))
R_SENDER_OK = Reply(250, (b"2.1.0 Ok",))
R_VRFY = Reply(252, (b"2.5.2 Cannot VRFY user, but will accept message and attempt delivery",))
R_HELP = Reply(214, (b"2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",))
R_UNKNOWN = Reply(500, (b"5.5.2 Error: command not recognized",))
R_LINE_TOO_LONG = Reply(500, (b"5.5.2 Error: line too long",))
R_BAD_CHARS = Reply(500, (b"5.5.2 Error: CR, LF or NUL inside a command line",))
R_NEED_HELO = Reply(503, (b"5.5.1 Error: send HELO/EHLO first",))
R_NESTED_MAIL = Reply(503, (b"5.5.1 Error: nested MAIL command",))
R_NEED_MAIL = Reply(503, (b"5.5.1 Error: need MAIL command",))
R_NEED_RCPT = Reply(554, (b"5.5.1 Error: no valid recipients",))
R_HELO_SYNTAX = Reply(501, (b"5.5.4 Syntax: EHLO hostname",))
R_MAIL_SYNTAX = Reply(501, (b"5.5.4 Syntax: MAIL FROM:<address>",))
R_RCPT_SYNTAX = Reply(501, (b"5.5.4 Syntax: RCPT TO:<address>",))
R_NO_PARAMS = Reply(501, (b"5.5.4 Syntax: no parameters allowed",))
R_TOO_BIG = Reply(552, (b"5.3.4 Message size exceeds fixed limit",))
R_TOO_MANY_RCPTS = Reply(452, (b"4.5.3 Error: too many recipients",))
R_OTHER_BACKEND = Reply(452, (b"4.5.3 Too many recipients: send this one in a new transaction",))
R_BARE_NEWLINE = Reply(550, (b"5.6.11 Message refused: bare CR or LF in the message body",))
R_AUTH_SERVICE = Reply(451, (b"4.3.2 Internal server error",))
R_BACKEND_DOWN = Reply(451, (b"4.4.1 Cannot reach the mail server, try again later",))
R_BACKEND_LOST = Reply(451, (b"4.4.2 Lost the connection to the mail server, try again later",))
R_INTERNAL = Reply(451, (b"4.3.0 Internal error, try again later",))
R_NOT_AVAILABLE = Reply(502, (b"5.5.1 Error: command not available",))
R_TOO_MANY_ERRORS = Reply(421, (b"4.7.0 Error: too many errors",))
R_READY_TLS = Reply(220, (b"2.0.0 Ready to start TLS",))
R_TLS_ACTIVE = Reply(503, (b"5.5.1 Error: TLS already active",))
R_STARTTLS_SYNTAX = Reply(501, (b"5.5.4 Syntax: STARTTLS",))
R_NEED_STARTTLS = Reply(530, (b"5.7.0 Must issue a STARTTLS command first",))
R_BACKEND_NO_TLS = Reply(451, (b"4.7.5 TLS is required, but the mail server does not offer it",))
R_BACKEND_TLS = Reply(451, (b"4.7.5 TLS with the mail server failed, try again later",))
