"""Tests for L{relaygate.sasl}: the protocol-neutral parts (SMTP's use is in test_smtp_auth)."""

from __future__ import annotations

import base64

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.sasl import (
    MAX_PASSWORD,
    MAX_USER,
    Challenge,
    Credentials,
    Failed,
    SASLExchange,
    decode,
    encode_plain,
    make_salt,
    mechanism_names,
    usable,
)


class ExchangeTests(SynchronousTestCase):
    """L{SASLExchange} turns responses into challenges, credentials or a failure."""

    def test_external_prompt(self) -> None:
        """EXTERNAL without an initial response asks with the given prompt (nginx: Username:)."""
        self.assertEqual(SASLExchange("external").first(None), Challenge(b""))
        self.assertEqual(
            SASLExchange("external", external_prompt=b"Username:").first(None),
            Challenge(b"Username:"),
        )

    def test_external_identity(self) -> None:
        """EXTERNAL's response is the authorization identity, possibly empty ("=")."""
        exchange = SASLExchange("external")
        self.assertEqual(exchange.first(b"="), Credentials("external", b""))
        encoded = base64.b64encode(b"bob")
        self.assertEqual(exchange.respond(encoded), Credentials("external", b"bob"))

    def test_login_empty_user_refused(self) -> None:
        """AUTH LOGIN with an empty user name is malformed."""
        self.assertIs(SASLExchange("login").first(b"="), Failed.MALFORMED)

    def test_plain_limits(self) -> None:
        """PLAIN takes a user of up to MAX_USER octets and a password of up to MAX_PASSWORD."""
        exchange = SASLExchange("plain")
        longest = b"\0" + b"u" * MAX_USER + b"\0" + b"p" * MAX_PASSWORD
        self.assertEqual(
            exchange.first(base64.b64encode(longest)),
            Credentials("plain", b"u" * MAX_USER, b"p" * MAX_PASSWORD),
        )
        for decoded in [b"\0" + b"u" * (MAX_USER + 1) + b"\0pw", b"a\0b\0c\0d", b"\0\0pw"]:
            self.assertIs(exchange.first(base64.b64encode(decoded)), Failed.MALFORMED)

    def test_challenge_encoded(self) -> None:
        """A challenge goes on the wire base64-encoded."""
        self.assertEqual(Challenge(b"Password:").encoded(), b"UGFzc3dvcmQ6")


class HelperTests(SynchronousTestCase):
    """The small functions around the exchange."""

    def test_decode(self) -> None:
        """Strict base64; "=" is the empty response; anything else is C{None}."""
        self.assertEqual(decode(b"Ym9i"), b"bob")
        self.assertEqual(decode(b"="), b"")
        self.assertIsNone(decode(b"Ym9i!"))
        self.assertIsNone(decode(b"Ym9"))

    def test_decode_refuses_pad_bits(self) -> None:
        """Non-canonical base64 (pad bits set: C{/AB=} for C{/AA=}) is not decoded."""
        self.assertEqual(decode(b"/AA="), b"\xfc\x00")
        self.assertIsNone(decode(b"/AB="))

    def test_usable(self) -> None:
        """NUL, CR and LF are never usable; length is checked against the limit."""
        self.assertTrue(usable(b"bob"))
        for bad in [b"b\0b", b"b\rb", b"b\nb", b"u" * (MAX_USER + 1)]:
            self.assertFalse(usable(bad))
        self.assertTrue(usable(b"p" * MAX_PASSWORD, MAX_PASSWORD))

    def test_encode_plain(self) -> None:
        """The PLAIN response a backend gets: NUL user NUL password, base64."""
        self.assertEqual(encode_plain(b"bob", b"pw"), base64.b64encode(b"\0bob\0pw"))

    def test_make_salt(self) -> None:
        """nginx's salt format: <random.time@name>."""
        clock = Clock()
        clock.advance(1700000000)
        self.assertEqual(
            make_salt("gw.example.org", clock, lambda: 42), b"<42.1700000000@gw.example.org>"
        )

    def test_mechanism_names(self) -> None:
        """Configured methods become keywords in the configured order; unknown ones are dropped."""
        self.assertEqual(
            mechanism_names(("external", "plain", "apop", "cram-md5")),
            [b"EXTERNAL", b"PLAIN", b"CRAM-MD5"],
        )
