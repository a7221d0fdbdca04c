"""Property tests for L{relaygate.smtp.xclient}: xtext round trips, and no value is ever cut."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaygate.smtp.xclient import (
    MAX_XCLIENT_LINE,
    UNAVAILABLE,
    XClientTooLong,
    xclient_commands,
    xtext,
    xtext_decode,
)
from tests import properties  # noqa: F401 (loads the Hypothesis profile)

# RFC 1891 section 5: xchar is "!" to "~" except "+" and "="; anything else is "+" HEXCHAR.
_XTEXT = re.compile(rb"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_NAMES = (b"ADDR", b"PORT", b"NAME", b"PROTO", b"HELO", b"LOGIN")
# Values rich in the bytes xtext escapes, so lines fill up quickly.
_values = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"+", b"=", b"\x00", b"\r\n", b" ", b"a", b"\xff"]), max_size=250
).map(b"".join)


class XtextPropertyTests(SynchronousTestCase):
    """Any bytes: encoded as valid xtext, decoded back to themselves."""

    @given(st.binary(max_size=600))
    def test_round_trip(self, value: bytes) -> None:
        """decode(encode(x)) == x."""
        self.assertEqual(xtext_decode(xtext(value)), value)

    @given(st.binary(max_size=600))
    def test_only_xchar_and_escapes(self, value: bytes) -> None:
        """The encoding has only xchar and C{+HH}: no CR, LF, NUL, space, C{=} or raw C{+}."""
        encoded = xtext(value)
        self.assertIsNotNone(_XTEXT.fullmatch(encoded))
        self.assertLessEqual(len(value), len(encoded))
        self.assertLessEqual(len(encoded), 3 * len(value))


class CommandPropertyTests(SynchronousTestCase):
    """Any attributes: every line fits, and every value arrives whole or as [UNAVAILABLE]."""

    @given(st.lists(st.tuples(st.sampled_from(_NAMES), _values), max_size=8))
    def test_values_whole_or_unavailable(self, attributes: list[tuple[bytes, bytes]]) -> None:
        """Lines are under 512 octets; each value decodes to itself, or LOGIN raises."""
        try:
            commands = xclient_commands(b" ".join(_NAMES), attributes)
        except XClientTooLong as e:
            self.assertEqual(e.name, b"LOGIN")
            self.assertIn(e.name, [name for name, _ in attributes])
            return
        sent: list[tuple[bytes, bytes]] = []
        for command in commands:
            self.assertLessEqual(len(command), MAX_XCLIENT_LINE)
            verb, *parts = command.split(b" ")
            self.assertEqual(verb, b"XCLIENT")
            self.assertTrue(parts)
            for part in parts:
                name, _, value = part.partition(b"=")
                sent.append((name, value))
        self.assertEqual([name for name, _ in sent], [name for name, _ in attributes])
        for (name, value), (_, encoded) in zip(attributes, sent, strict=True):
            if encoded == UNAVAILABLE and xtext(value) != UNAVAILABLE:
                self.assertIn(name, (b"NAME", b"HELO"))
            else:
                self.assertEqual(xtext_decode(encoded), value)
