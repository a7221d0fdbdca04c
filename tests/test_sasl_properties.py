"""Property tests for SMTP AUTH's SASL decoding (L{relaygate.sasl}): any line ends the
exchange or goes on, never raises, and accepted identities carry no NUL, CR or LF."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaygate.sasl import (
    MAX_PASSWORD,
    MAX_USER,
    Challenge,
    Credentials,
    Failed,
    SASLExchange,
    decode,
    parse_auth_command,
)
from relaygate.smtp.auth_replies import auth_refusal
from tests import properties  # noqa: F401 (loads the Hypothesis profile)

_MECHANISMS = ("plain", "login", "cram-md5", "external")
# Decoded payloads rich in separators and line breaks.
_payloads = st.binary(max_size=400) | st.lists(
    st.sampled_from([b"\x00", b"\r", b"\n", b" ", b"alice", b"@example.org", b"0123456789abcdef"]),
    max_size=12,
).map(b"".join)
# Lines as a client may send them: base64 of a payload, or anything at all.
_lines = (
    _payloads.map(base64.b64encode)
    | st.binary(max_size=200)
    | st.sampled_from([b"*", b"=", b"", b" * ", b"===="])
)


def _check_credentials(case: SynchronousTestCase, credentials: Credentials) -> None:
    """What reaches the router: no NUL, CR or LF, and within the length limits."""
    for value, limit in ((credentials.user, MAX_USER), (credentials.password, MAX_PASSWORD)):
        case.assertLessEqual(len(value), limit)
        for byte in b"\x00\r\n":
            case.assertNotIn(byte, value)


class DecodeTests(SynchronousTestCase):
    """L{decode}: strict base64."""

    @given(st.binary(max_size=300))
    def test_round_trip(self, value: bytes) -> None:
        """Any bytes, base64-encoded, decode to themselves (C{=} is the empty response)."""
        self.assertEqual(decode(base64.b64encode(value) or b"="), value)

    @given(st.binary(max_size=300))
    def test_never_raises(self, line: bytes) -> None:
        """Any line decodes to bytes or C{None}; only valid base64 decodes."""
        decoded = decode(line)
        if decoded is not None and line != b"=":
            self.assertEqual(base64.b64encode(decoded), line)


class ExchangeTests(SynchronousTestCase):
    """L{SASLExchange}: any lines, in any mechanism."""

    @given(st.sampled_from(_MECHANISMS), st.none() | _lines, st.lists(_lines, max_size=4))
    def test_any_lines_never_raise(
        self, mechanism: str, initial: bytes | None, lines: list[bytes]
    ) -> None:
        """Each step is a challenge, credentials or a failure; credentials are clean."""
        exchange = SASLExchange(mechanism, salt=b"<1.2@gw.test>")
        step = exchange.first(initial)
        for line in lines:
            if not isinstance(step, Challenge):
                break
            step = exchange.respond(line)
        self.assertIsInstance(step, Challenge | Credentials | Failed)
        if isinstance(step, Credentials):
            _check_credentials(self, step)
            self.assertEqual(step.method, mechanism)

    @given(_payloads, _payloads, _payloads)
    def test_plain_splitting(self, authzid: bytes, user: bytes, password: bytes) -> None:
        """PLAIN gives the authcid and password exactly, or refuses: never parts of them."""
        message = authzid + b"\x00" + user + b"\x00" + password
        step = SASLExchange("plain").first(base64.b64encode(message))
        clean = (
            message.count(b"\x00") == 2
            and user
            and len(user) <= MAX_USER
            and len(password) <= MAX_PASSWORD
            and not any(c in user + password for c in b"\r\n")
        )
        if clean:
            self.assertEqual(step, Credentials("plain", user, password))
        else:
            self.assertIs(step, Failed.MALFORMED)

    @given(st.binary(max_size=100))
    def test_auth_command_never_raises(self, rest: bytes) -> None:
        """AUTH's argument splits into an upper-case mechanism name, or is refused."""
        parsed = parse_auth_command(rest)
        if parsed is not None:
            name, _ = parsed
            self.assertEqual(name, name.upper())
            self.assertTrue(name)

    @given(
        st.text(max_size=100) | st.text(alphabet="\r\n\x00 ab", max_size=10),
        # The routers pass on only codes without control characters (routing/http.py checks
        # Auth-Error-Code); auth_refusal() itself does not clean the code.
        st.text(st.characters(blacklist_categories=["Cc"]), max_size=30)
        | st.from_regex(r"[245][0-9]{2}( [245]\.[0-9]\.[0-9])?", fullmatch=True),
    )
    def test_refusal_carries_no_line_break(self, message: str, error_code: str) -> None:
        """A router's refusal becomes one reply line without CR, LF or NUL, code 4xx or 5xx."""
        reply = auth_refusal(message, error_code)
        self.assertIn(reply.code // 100, (4, 5))
        self.assertEqual(len(reply.lines), 1)
        for byte in b"\x00\r\n":
            self.assertNotIn(byte, reply.lines[0])
