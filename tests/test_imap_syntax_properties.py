"""Property tests for L{relaygate.imap_syntax}: any bytes parse or are refused, never raise,
and the strings we quote come back as they were."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaygate.imap_syntax import Command, Continue, Invalid, Parsed, astring, parse_command, quote
from tests import properties  # noqa: F401 (loads the Hypothesis profile)

# Bytes rich in what the grammar cares about, so random input reaches deep into the parser.
_interesting = st.lists(
    st.sampled_from(
        [
            b"a1",
            b" ",
            b"LOGIN",
            b'"',
            b"\\",
            b"{",
            b"}",
            b"{3}",
            b"{2+}",
            b"(",
            b")",
            b"\r\n",
            b"\r",
            b"\n",
            b"\x00",
            b"+",
            b"*",
            b"x",
            b"\xff",
            b"99999999999",
            b"ID",
            b"NIL",
        ]
    ),
    max_size=40,
).map(b"".join)
_inputs = st.binary(max_size=300) | _interesting
_tags = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.", min_size=1, max_size=8).map(
    str.encode
)


def parse_all(data: bytes, max_line: int = 8192, max_literal: int = 65536) -> Parsed | None:
    """Parse as the front does: answer every continuation request, until a final result."""
    continued = 0
    while True:
        result = parse_command(data, continued, max_line, max_literal)
        if not isinstance(result, Continue):
            return result
        if result.offset <= continued:
            raise AssertionError(f"continuation offset did not advance: {result}")
        continued = result.offset


class ParseAnythingTests(SynchronousTestCase):
    """Any bytes: a command, a continuation, a refusal or "need more", and nothing else."""

    @given(_inputs, st.integers(min_value=16, max_value=512), st.integers(0, 64))
    def test_never_raises(self, data: bytes, max_line: int, max_literal: int) -> None:
        """Every result uses between 1 and len(data) bytes, so the caller always progresses."""
        result = parse_command(data, 0, max_line, max_literal)
        if result is None:
            # "Need more" only while what is buffered is within the limits: at most 64
            # arguments, so 65 line segments between literals.
            self.assertLessEqual(len(data), 65 * max_line + max_literal)
            return
        self.assertIsInstance(result, Command | Continue | Invalid)
        if isinstance(result, Continue):
            self.assertTrue(0 < result.offset <= len(data))
        else:
            self.assertTrue(0 < result.size <= len(data), result)

    @given(_inputs)
    def test_prefix_of_a_command_is_not_refused(self, data: bytes) -> None:
        """If C{data} parses, no prefix of that command is refused: bytes may come split."""
        result = parse_all(data)
        if not isinstance(result, Command):
            return
        for end in range(result.size):
            prefix = parse_command(data[:end], end)
            self.assertFalse(isinstance(prefix, Invalid | Command), (data[:end], prefix))
        self.assertEqual(parse_all(data[: result.size]), result)


class RoundTripTests(SynchronousTestCase):
    """Strings we send (L{astring}, L{quote}) parse back to the same bytes."""

    @given(_tags, st.binary(max_size=100), st.binary(max_size=100), st.booleans())
    def test_astring_round_trip(
        self, tag: bytes, user: bytes, password: bytes, literal_plus: bool
    ) -> None:
        """C{LOGIN} with two astrings, quoted or literal, parses to the same two values."""
        line = tag + b" LOGIN"
        for value in (user, password):
            text, literal = astring(value, literal_plus)
            line += b" " + text
            if literal is not None:
                line += b"\r\n" + literal
        line += b"\r\n"
        result = parse_all(line)
        self.assertEqual(result, Command(tag, b"LOGIN", (user, password), len(line)))

    @given(_tags, st.lists(st.binary(max_size=40), max_size=6))
    def test_quoted_list_round_trip(self, tag: bytes, values: list[bytes]) -> None:
        """C{ID (...)} of quoted strings parses to the values without CR, LF and NUL."""
        line = tag + b" ID (" + b" ".join(quote(v) for v in values) + b")\r\n"
        cleaned = tuple(bytes(c for c in v if c not in b"\r\n\x00") for v in values)
        self.assertEqual(parse_all(line), Command(tag, b"ID", (cleaned,), len(line)))
