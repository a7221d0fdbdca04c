"""Tests for L{relaygate.imap_syntax}: pre-login IMAP commands parsed without I/O."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaygate.imap_syntax import Command, Continue, Invalid, astring, parse_command, parse_line


class ParseCommandTests(SynchronousTestCase):
    """L{parse_command} turns bytes into commands, continuations and errors."""

    def test_atoms(self) -> None:
        """A tag, a command name (upper-cased) and atoms."""
        self.assertEqual(
            parse_command(b"a1 login alice secret\r\nrest"),
            Command(b"a1", b"LOGIN", (b"alice", b"secret"), 23),
        )

    def test_quoted_escapes(self) -> None:
        """Quoted strings drop their quotes and undo C{\\"} and C{\\\\}."""
        parsed = parse_command(b'a LOGIN "al ice" "p\\"w\\\\d %"\r\n')
        assert isinstance(parsed, Command)
        self.assertEqual(parsed.args, (b"al ice", b'p"w\\d %'))

    def test_bad_escape(self) -> None:
        """Only C{\\"} and C{\\\\} are escapes; the line is refused and skipped."""
        self.assertEqual(
            parse_command(b'a LOGIN "a\\b" c\r\nb NOOP\r\n'),
            Invalid(b"a", "invalid escape in quoted string", 17),
        )

    def test_incomplete(self) -> None:
        """Without a line end, more bytes are needed."""
        self.assertIsNone(parse_command(b"a LOGIN alice"))
        self.assertIsNone(parse_command(b'a LOGIN "ali'))
        self.assertIsNone(parse_command(b"a NOOP\r"))

    def test_bare_lf(self) -> None:
        """A bare LF ends a line, as nginx accepts it."""
        self.assertEqual(parse_command(b"a NOOP\n"), Command(b"a", b"NOOP", (), 7))

    def test_sync_literal_asks_for_continuation(self) -> None:
        """C{{n}} asks for a continuation once, then waits for the literal's bytes."""
        data = b"a LOGIN {5}\r\n"
        self.assertEqual(parse_command(data), Continue(13))
        self.assertIsNone(parse_command(data, continued=13))
        data += b"alice {4}\r\n"
        self.assertEqual(parse_command(data, continued=13), Continue(24))
        data += b'p "w\r\n'
        self.assertEqual(
            parse_command(data, continued=24), Command(b"a", b"LOGIN", (b"alice", b'p "w'), 30)
        )

    def test_non_sync_literal(self) -> None:
        """C{{n+}} needs no continuation (RFC 7888)."""
        self.assertEqual(
            parse_command(b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\n"),
            Command(b"a", b"LOGIN", (b"alice", b"pw"), 30),
        )

    def test_literal_too_big(self) -> None:
        """A synchronizing literal over the limit is refused before the client sends it."""
        self.assertEqual(
            parse_command(b"a LOGIN {5000}\r\n", max_literal=4096),
            Invalid(b"a", "literal too big", 16),
        )

    def test_non_sync_literal_too_big_is_fatal(self) -> None:
        """A C{{n+}} literal over the limit is already on its way: the session must end."""
        self.assertEqual(
            parse_command(b"a LOGIN {5000+}\r\nxxxx", max_literal=4096),
            Invalid(b"a", "literal too big", 17, fatal=True),
        )

    def test_line_too_long(self) -> None:
        """A line that exceeds the limit without ending is fatal."""
        self.assertEqual(
            parse_command(b"a LOGIN " + b"x" * 600, max_line=512),
            Invalid(b"a", "line too long", 608, fatal=True),
        )

    def test_bad_line_with_non_sync_literal_is_fatal(self) -> None:
        """An invalid line announcing C{{n+}} can't be skipped safely (as nginx decides)."""
        parsed = parse_command(b"a LO)GIN {3+}\r\nabc\r\n")
        assert isinstance(parsed, Invalid)
        self.assertTrue(parsed.fatal)

    def test_lists(self) -> None:
        """Parenthesized lists, as ID sends them."""
        parsed = parse_command(b'a ID ("name" "x" "version" NIL)\r\n')
        assert isinstance(parsed, Command)
        self.assertEqual(parsed.args, ((b"name", b"x", b"version", b"NIL"),))

    def test_empty_line(self) -> None:
        """An empty line is an error with the untagged tag."""
        self.assertEqual(parse_command(b"\r\n"), Invalid(b"*", "missing tag", 2))

    def test_parse_line(self) -> None:
        """SASL response lines: without CRLF, with their size; bounded."""
        self.assertEqual(parse_line(b"abc\r\nx", 100), (b"abc", 5))
        self.assertIsNone(parse_line(b"abc", 100))
        self.assertEqual(parse_line(b"x" * 100, 100), Invalid(b"*", "line too long", 100, True))


class AstringTests(SynchronousTestCase):
    """L{astring} quotes what it can and uses literals for the rest."""

    def test_quoted(self) -> None:
        """Printable ASCII is quoted with escapes."""
        self.assertEqual(astring(b'p "w\\ %', False), (b'"p \\"w\\\\ %"', None))

    def test_literal(self) -> None:
        """UTF-8 goes as a literal, synchronizing or not."""
        value = "pässword".encode()
        self.assertEqual(astring(value, False), (b"{9}", value))
        self.assertEqual(astring(value, True), (b"{9+}", value))
