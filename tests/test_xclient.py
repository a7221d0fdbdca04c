"""Tests for L{relaygate.smtp.xclient}: exact xtext bytes, lines that never cut a value, and
what the SMTP front does with an attribute that cannot be told."""

from __future__ import annotations

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relaygate.routing.router import Accept
from relaygate.smtp.xclient import (
    MAX_ATTRIBUTE,
    MAX_XCLIENT_LINE,
    XClientTooLong,
    xclient_commands,
    xtext,
    xtext_decode,
)
from tests.smtp_harness import BACKEND, FrontHarness
from tests.test_smtp_submission import PLAIN, submission_config

ALL = b"ADDR PORT NAME PROTO HELO LOGIN"


class XtextTests(SynchronousTestCase):
    """RFC 1891 section 5 (xtext): C{+HH}, uppercase, for bytes < 33, > 126, C{+} and C{=}."""

    def test_plus_and_equals_escaped(self) -> None:
        """C{+} is C{+2B} and C{=} is C{+3D}: raw, they would end or fake a value."""
        self.assertEqual(xtext(b"a+b=c"), b"a+2Bb+3Dc")

    def test_bytes_below_33_escaped(self) -> None:
        """NUL, TAB, CR, LF and space are escaped with two uppercase hex digits."""
        self.assertEqual(xtext(b"\x00\t\r\n \x1f"), b"+00+09+0D+0A+20+1F")

    def test_bytes_above_126_escaped(self) -> None:
        """DEL and every 8-bit byte (UTF-8 included) are escaped, uppercase hex."""
        self.assertEqual(xtext(b"\x7f\xc3\xa9\xff"), b"+7F+C3+A9+FF")

    def test_xchars_as_they_are(self) -> None:
        """Every other printable byte, 33 to 126, goes as it is."""
        printable = bytes(b for b in range(33, 127) if b not in b"+=")
        self.assertEqual(xtext(printable), printable)

    def test_decode(self) -> None:
        """The strict decoder inverts the encoder, and refuses what is not xtext."""
        self.assertEqual(xtext_decode(b"a+2Bb+3Dc+00+FF"), b"a+b=c\x00\xff")
        for bad in (b"a=b", b"+2b", b"+2", b"a+", b"a b", b"+G0", b"\x00", b"\xff"):
            self.assertRaises(ValueError, xtext_decode, bad)


class CommandTests(SynchronousTestCase):
    """L{xclient_commands}: whole values only, each line under 512 octets."""

    def test_attributes_in_order_on_one_line(self) -> None:
        """Offered attributes go in the caller's order, xtext-encoded; others are left out."""
        self.assertEqual(
            xclient_commands(
                b"addr helo login",
                [(b"ADDR", b"192.0.2.1"), (b"PORT", b"25"), (b"HELO", b"a=b"), (b"LOGIN", b"u+x")],
            ),
            [b"XCLIENT ADDR=192.0.2.1 HELO=a+3Db LOGIN=u+2Bx"],
        )

    def test_nothing_offered_nothing_sent(self) -> None:
        """No offered attribute, no command."""
        self.assertEqual(xclient_commands(b"", [(b"ADDR", b"192.0.2.1")]), [])

    def test_long_values_split_between_lines_never_cut(self) -> None:
        """Attributes that do not fit together go on separate lines, each whole."""
        login = b"l" * (MAX_ATTRIBUTE - len(b"LOGIN="))
        commands = xclient_commands(ALL, [(b"ADDR", b"192.0.2.1"), (b"LOGIN", login)])
        self.assertEqual(commands, [b"XCLIENT ADDR=192.0.2.1", b"XCLIENT LOGIN=" + login])
        self.assertEqual(len(commands[1]), MAX_XCLIENT_LINE)

    def test_login_of_plus_and_equals_too_long_raises(self) -> None:
        """221 octets of C{+} and C{=} are 663 as xtext: the login cannot be told, so raise."""
        login = b"+=" * 110 + b"+"
        with self.assertRaises(XClientTooLong) as caught:
            xclient_commands(ALL, [(b"ADDR", b"192.0.2.1"), (b"LOGIN", login)])
        self.assertEqual(caught.exception.name, b"LOGIN")
        self.assertEqual(caught.exception.encoded_length, len(b"LOGIN=") + 3 * 221)

    def test_login_that_just_fits_goes_whole(self) -> None:
        """A login whose xtext fills the line exactly goes; one octet more raises."""
        fits = b"=" * ((MAX_ATTRIBUTE - len(b"LOGIN=")) // 3)
        self.assertEqual(
            xclient_commands(ALL, [(b"LOGIN", fits)]), [b"XCLIENT LOGIN=" + b"+3D" * len(fits)]
        )
        self.assertRaises(XClientTooLong, xclient_commands, ALL, [(b"LOGIN", fits + b"x" * 3)])

    def test_long_helo_and_name_unavailable(self) -> None:
        """HELO and NAME too long for a line, or over 255 octets, go as [UNAVAILABLE]."""
        escaped = b"+" * 200  # 255 octets or fewer, but 600 as xtext
        plain = b"h" * 401  # fits a line, but Postfix refuses a HELO over 255 octets
        for value in (escaped, plain):
            self.assertEqual(
                xclient_commands(ALL, [(b"NAME", value), (b"HELO", value)]),
                [b"XCLIENT NAME=[UNAVAILABLE] HELO=[UNAVAILABLE]"],
            )
        self.assertEqual(
            xclient_commands(ALL, [(b"HELO", b"h" * 255)]), [b"XCLIENT HELO=" + b"h" * 255]
        )


class FrontTests(SynchronousTestCase):
    """The SMTP front and a backend that offers XCLIENT, on StringTransports."""

    def start(self, helo: bytes, user: bytes) -> FrontHarness:
        h = FrontHarness(submission_config(xclient=True, backend_auth="xclient"))
        h.router.answer = Accept((BACKEND,), user=user)
        h.send(b"EHLO " + helo + b"\r\nAUTH PLAIN " + PLAIN + b"\r\n")
        self.assertTrue(h.replies().endswith(b"235 2.7.0 Authentication successful\r\n"))
        h.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        return h

    def test_login_too_long_for_xclient_is_451_and_no_mail(self) -> None:
        """A 221-octet login of C{+} and C{=}: 451 4.7.0, and the backend gets no XCLIENT
        and no MAIL, only QUIT."""
        login = b"+=" * 110 + b"+"
        h = self.start(b"client.test", login)
        backend = h.connect_backend()
        self.assertEqual(backend.received(), b"EHLO gw.test\r\n")
        with capturedLogs() as events:
            backend.reply(b"250-backend\r\n250-PIPELINING\r\n250 XCLIENT " + ALL + b"\r\n")
        self.assertEqual(backend.received(), b"QUIT\r\n")
        self.assertEqual(
            h.replies(),
            b"250 2.1.0 Ok\r\n451 4.7.0 Your login is too long to pass on to the mail server\r\n",
        )
        warnings = [e for e in events if "login" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.assertIn("LOGIN is 669 octets", warnings[0]["error"])

    def test_long_ehlo_name_goes_as_unavailable(self) -> None:
        """A 401-octet EHLO name goes as HELO=[UNAVAILABLE]; the login still goes whole."""
        h = self.start(b"h" * 401, b"alice+x@example.org")
        backend = h.connect_backend()
        self.assertEqual(backend.received(), b"EHLO gw.test\r\n")
        backend.reply(b"250-backend\r\n250-PIPELINING\r\n250 XCLIENT " + ALL + b"\r\n")
        self.assertEqual(
            backend.received(),
            b"XCLIENT ADDR=127.0.0.1 PORT=40000 NAME=[UNAVAILABLE] PROTO=ESMTP "
            b"HELO=[UNAVAILABLE] LOGIN=alice+2Bx@example.org\r\n",
        )
