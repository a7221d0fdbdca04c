"""I/O-free parsing of the IMAP commands a client sends before login, and IMAP string quoting.

L{parse_command} takes the bytes received so far and returns one parsed command (with how many
bytes it used), a request for a literal continuation, a syntax error, or C{None} for "need more
bytes". It understands what the pre-auth commands use (RFC 3501 section 9): a tag, a command
name, atoms, quoted strings with C{\\"} and C{\\\\}, parenthesized lists (for C{ID}), and literals,
both synchronizing C{{n}} and non-synchronizing C{{n+}} (RFC 7888). Every line and literal has a
size limit, so the caller never buffers more than the limits allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

Arg: TypeAlias = "bytes | tuple[Arg, ...]"
"""An argument: an atom or string (as bytes, quotes and escapes removed) or a list of them."""

_CTL = frozenset(range(0x20)) | {0x7F}
_ATOM_STOP = frozenset(b' (){"') | _CTL
_TAG_STOP = frozenset(b' (){%*"\\+') | _CTL
_MAX_ARGS = 64
_MAX_DEPTH = 8


@dataclass(frozen=True)
class Command:
    """A complete command: C{size} bytes of the buffer, including its final CRLF."""

    tag: bytes
    name: bytes
    args: tuple[Arg, ...]
    size: int


@dataclass(frozen=True)
class Continue:
    """The client sent C{{n}} and waits for C{+} before sending the literal.

    C{offset} is the end of the literal's announcement in the buffer; pass it back as
    C{continued} once the continuation request has been sent.
    """

    offset: int


@dataclass(frozen=True)
class Invalid:
    """A command the gateway refuses: answer C{<tag> BAD <reason>} and drop C{size} bytes.

    C{fatal} means the byte stream cannot be followed any more (a line or non-synchronizing
    literal over its limit): answer, then close the connection.
    """

    tag: bytes
    reason: str
    size: int
    fatal: bool = False


Parsed: TypeAlias = "Command | Continue | Invalid"


class _NeedMore(Exception):
    pass


class _NeedContinuation(Exception):
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Bad(Exception):
    def __init__(self, reason: str, position: int, size: int | None = None, fatal: bool = False):
        self.reason = reason
        self.position = position
        self.size = size
        self.fatal = fatal


class _Scanner:
    """One pass over the buffer; raises to say why it stopped before a whole command."""

    def __init__(self, data: bytes, continued: int, max_line: int, max_literal: int) -> None:
        self.data = data
        self.pos = 0
        self.continued = continued
        self.max_line = max_line
        self.max_literal = max_literal
        self.segment_start = 0
        self.literal_total = 0
        self.count = 0
        self.tag = b"*"

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise _NeedMore()
        return self.data[self.pos]

    def command(self) -> Command:
        start = self.pos
        while self.peek() not in _TAG_STOP:
            self.pos += 1
        if self.pos == start:
            raise _Bad("missing tag", self.pos)
        self.tag = self.data[start : self.pos]
        self.expect_space()
        start = self.pos
        while self.peek() not in _ATOM_STOP:
            self.pos += 1
        if self.pos == start:
            raise _Bad("missing command", self.pos)
        name = self.data[start : self.pos].upper()
        args: list[Arg] = []
        while not self.at_end_of_line():
            self.expect_space()
            args.append(self.argument(0))
        return Command(self.tag, name, tuple(args), self.pos)

    def expect_space(self) -> None:
        if self.peek() != 0x20:
            raise _Bad("expected a space", self.pos)
        self.pos += 1

    def at_end_of_line(self) -> bool:
        """Consume CRLF (or a bare LF) if it comes next."""
        c = self.peek()
        if c == 0x0A:
            self.pos += 1
            return True
        if c == 0x0D:
            if self.pos + 1 >= len(self.data):
                raise _NeedMore()
            if self.data[self.pos + 1] != 0x0A:
                raise _Bad("CR without LF", self.pos)
            self.pos += 2
            return True
        return False

    def argument(self, depth: int) -> Arg:
        self.count += 1
        if self.count > _MAX_ARGS:
            raise _Bad("too many arguments", self.pos)
        c = self.peek()
        if c == ord('"'):
            return self.quoted()
        if c == ord("{"):
            return self.literal()
        if c == ord("("):
            if depth >= _MAX_DEPTH:
                raise _Bad("lists nested too deeply", self.pos)
            self.pos += 1
            items: list[Arg] = []
            while self.peek() != ord(")"):
                if items:
                    self.expect_space()
                items.append(self.argument(depth + 1))
            self.pos += 1
            return tuple(items)
        start = self.pos
        while self.peek() not in _ATOM_STOP:
            self.pos += 1
        if self.pos == start:
            raise _Bad("invalid argument", self.pos)
        return self.data[start : self.pos]

    def quoted(self) -> bytes:
        self.pos += 1
        out = bytearray()
        while True:
            c = self.peek()
            self.pos += 1
            if c == ord('"'):
                return bytes(out)
            if c == ord("\\"):
                c = self.peek()
                if c not in b'"\\':
                    raise _Bad("invalid escape in quoted string", self.pos)
                self.pos += 1
            elif c in (0x0D, 0x0A, 0x00):
                raise _Bad("line break in quoted string", self.pos - 1)
            out.append(c)

    def literal(self) -> bytes:
        self.pos += 1
        start = self.pos
        while self.peek() in b"0123456789":
            self.pos += 1
            if self.pos - start > 10:
                raise _Bad("invalid literal", self.pos)
        digits = self.data[start : self.pos]
        if not digits:
            raise _Bad("invalid literal", self.pos)
        sync = True
        if self.peek() == ord("+"):
            sync = False
            self.pos += 1
        if self.peek() != ord("}"):
            raise _Bad("invalid literal", self.pos)
        self.pos += 1
        if not self.at_end_of_line():
            raise _Bad("literal must end the line", self.pos)
        header_end = self.pos
        size = int(digits)
        self.literal_total += size
        if self.literal_total > self.max_literal:
            # A client waiting for "+" takes BAD as "don't send it" (RFC 3501 7.5); after a
            # {n+} the literal is already on its way and can't be told from commands.
            raise _Bad("literal too big", self.pos, size=header_end, fatal=not sync)
        if sync and header_end > self.continued:
            raise _NeedContinuation(header_end)
        if len(self.data) < header_end + size:
            raise _NeedMore()
        self.pos = header_end + size
        self.segment_start = self.pos
        return self.data[header_end : self.pos]


def parse_command(
    data: bytes, continued: int = 0, max_line: int = 8192, max_literal: int = 65536
) -> Parsed | None:
    """Parse the first command in C{data}; C{None} means more bytes are needed.

    @param continued: the largest L{Continue.offset} already answered with a continuation.
    @param max_line: the longest line (text between literals) accepted, CRLF included.
    @param max_literal: the most literal bytes accepted in one command.
    """
    scanner = _Scanner(data, continued, max_line, max_literal)
    try:
        command = scanner.command()
    except _NeedMore:
        if len(data) - scanner.segment_start > max_line:
            return Invalid(scanner.tag, "line too long", len(data), fatal=True)
        return None
    except _NeedContinuation as e:
        return Continue(e.offset)
    except _Bad as e:
        if e.size is not None:
            return Invalid(scanner.tag, e.reason, e.size, e.fatal)
        return _skip_line(data, e, scanner, max_line)
    if command.size - scanner.segment_start > max_line:
        return Invalid(command.tag, "line too long", command.size)
    return command


def _skip_line(data: bytes, error: _Bad, scanner: _Scanner, max_line: int) -> Invalid | None:
    """Find the end of a bad line, so the next command can be read."""
    end = data.find(b"\n", error.position)
    if end < 0:
        if len(data) - scanner.segment_start > max_line:
            return Invalid(scanner.tag, "line too long", len(data), fatal=True)
        return None
    line = data[: end + 1].rstrip(b"\r\n")
    # A bad line that announced {n+} is followed by literal bytes we can't tell from
    # commands (nginx closes the connection for the same reason).
    fatal = line.endswith(b"+}")
    return Invalid(scanner.tag, error.reason, end + 1, fatal)


def parse_line(data: bytes, max_line: int) -> tuple[bytes, int] | Invalid | None:
    """The first line of C{data} without its CRLF, and the bytes it used (SASL responses)."""
    end = data.find(b"\n", 0, max_line)
    if end < 0:
        if len(data) >= max_line:
            return Invalid(b"*", "line too long", len(data), fatal=True)
        return None
    return data[:end].removesuffix(b"\r"), end + 1


def astring(value: bytes, literal_plus: bool) -> tuple[bytes, bytes | None]:
    """Encode C{value} for a command: a quoted string, or a literal when quoting can't carry it.

    Returns C{(text, literal)}: C{text} goes on the command line; when C{literal} is not
    C{None}, C{text} ends with the literal's announcement (C{{n}} or C{{n+}}) and C{literal}
    follows after the line break (after the server's continuation, for C{{n}}).
    """
    if value and all(0x20 <= c < 0x7F for c in value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', None
    if not value:
        return b'""', None
    plus = b"+" if literal_plus else b""
    return b"{%d%s}" % (len(value), plus), value


def quote(value: bytes) -> bytes:
    """A quoted string for C{value} with CR, LF and NUL dropped (for ID values we generate)."""
    cleaned = bytes(c for c in value if c not in (0x0D, 0x0A, 0x00))
    return b'"' + cleaned.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def response_code(text: bytes) -> tuple[bytes, bytes]:
    """Split C{[CODE ...] rest} into C{(b"CODE ...", b"rest")}; C{(b"", text)} without one."""
    if text.startswith(b"["):
        end = text.find(b"]")
        if end > 0:
            return text[1:end], text[end + 1 :].lstrip(b" ")
    return b"", text
