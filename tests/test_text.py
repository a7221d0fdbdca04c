"""Client bytes checked and made safe: L{relaygate.text}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaygate.text import one_line, visible


class VisibleTests(SynchronousTestCase):
    """L{visible}: printable ASCII from C{!} to C{~}, at least one byte."""

    def test_visible(self) -> None:
        """Every byte from 0x21 to 0x7E, on its own and all together, is visible."""
        self.assertTrue(visible(bytes(range(0x21, 0x7F))))
        self.assertTrue(all(visible(bytes([b])) for b in range(0x21, 0x7F)))

    def test_not_visible(self) -> None:
        """Empty, a space, a control byte, DEL or a byte past ASCII anywhere is not."""
        self.assertFalse(visible(b""))
        for bad in [*range(0x00, 0x21), 0x7F, *range(0x80, 0x100)]:
            self.assertFalse(visible(b"mx" + bytes([bad]) + b".test"), bad)


class OneLineTests(SynchronousTestCase):
    """L{one_line}: no CR, LF or NUL survives into a reply line."""

    def test_breaks_become_spaces(self) -> None:
        """CR, LF and NUL become spaces; other text is kept and encoded as UTF-8."""
        self.assertEqual(one_line("a\r\nb\0c é"), "a  b c é".encode())
