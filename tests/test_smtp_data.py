"""Tests for L{relaygate.smtp.data}: end-of-data, bare CR/LF refusal and size, chunk by chunk."""

from __future__ import annotations

import re
from typing import Final

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaygate.smtp.data import END_OF_DATA, BodyFault, BodyScanner, ScanFunction, scan_python

scan_c: ScanFunction | None
try:
    from relaygate.smtp._scan import scan as _built_scan
except ImportError:
    scan_c = None
else:
    scan_c = _built_scan


def feed_all(scanner: BodyScanner, chunks: list[bytes]) -> tuple[bytes, bytes | None]:
    """Feed C{chunks} in order; return the body bytes seen and what followed the end."""
    body = b""
    for index, chunk in enumerate(chunks):
        result = scanner.feed(chunk)
        body += result.body
        if result.rest is not None:
            return body, result.rest + b"".join(chunks[index + 1 :])
    return body, None


def every_split(data: bytes) -> list[list[bytes]]:
    """C{data} cut into two chunks at every position, and into single bytes."""
    splits = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    splits.append([data[i : i + 1] for i in range(len(data))])
    return splits


class _ScannerCase(SynchronousTestCase):
    """Runs its tests with the pure-Python scanner; L{_with_c} makes the C twin."""

    scan_chunk: ScanFunction = staticmethod(scan_python)

    def scanner(self, max_size: int) -> BodyScanner:
        return BodyScanner(max_size, self.scan_chunk)


class EndOfDataTests(_ScannerCase):
    """The message ends exactly at CRLF.CRLF, wherever the chunks are cut."""

    def test_end_found_in_one_chunk(self) -> None:
        """The body includes the marker; what follows is returned as the rest."""
        scanner = self.scanner(1000)
        result = scanner.feed(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        self.assertEqual(result.body, b"Subject: x\r\n\r\nhello\r\n.\r\n")
        self.assertEqual(result.rest, b"QUIT\r\n")
        self.assertIsNone(scanner.fault)

    def test_end_found_across_every_split(self) -> None:
        """The marker is found however it is split across chunks."""
        data = b"line one\r\nline two\r\n.\r\nMAIL FROM:<a@b>\r\n"
        for chunks in every_split(data):
            body, rest = feed_all(self.scanner(1000), chunks)
            self.assertEqual(
                (body, rest), (b"line one\r\nline two\r\n.\r\n", b"MAIL FROM:<a@b>\r\n"), chunks
            )

    def test_empty_message(self) -> None:
        """A lone '.' line right after DATA ends an empty message."""
        result = self.scanner(1000).feed(b".\r\nNOOP\r\n")
        self.assertEqual((result.body, result.rest), (b".\r\n", b"NOOP\r\n"))

    def test_dot_stuffed_lines_do_not_end(self) -> None:
        """'..' at a line start is a stuffed dot, passed on as is."""
        scanner = self.scanner(1000)
        result = scanner.feed(b"..\r\n.. \r\n..x\r\n")
        self.assertEqual((result.body, result.rest), (b"..\r\n.. \r\n..x\r\n", None))
        self.assertIsNone(scanner.fault)

    def test_dot_inside_a_line_does_not_end(self) -> None:
        """A '.' that is not alone on its line does not end the message."""
        result = self.scanner(1000).feed(b"a\r\n.x\r\n x.\r\n")
        self.assertIsNone(result.rest)


class SmugglingTests(_ScannerCase):
    """Bare CR or LF anywhere in the body is a fault, so no end-of-data variant can pass."""

    cases = [
        b"a\n.\nMAIL FROM:<evil@x>\r\n",
        b"a\r\n.\nMAIL FROM:<evil@x>\r\n",
        b"a\n.\r\nMAIL FROM:<evil@x>\r\n",
        b"a\r.\rMAIL FROM:<evil@x>\r\n",
        b"a\r\n.\rMAIL FROM:<evil@x>\r\n",
        b"a\r.\r\nMAIL FROM:<evil@x>\r\n",
        b"bare\nline\r\n",
        b"bare\rcarriage\r\n",
    ]

    def test_smuggling_sequences_are_faults(self) -> None:
        """Each non-CRLF line end marks the message as refused, however it is chunked."""
        for case in self.cases:
            for chunks in every_split(case):
                scanner = self.scanner(1000)
                feed_all(scanner, chunks)
                self.assertIs(scanner.fault, BodyFault.BARE_NEWLINE, (case, chunks))

    def test_crlf_split_between_chunks_is_not_a_fault(self) -> None:
        """A CR at the end of one chunk and LF at the start of the next make a CRLF."""
        scanner = self.scanner(1000)
        scanner.feed(b"abc\r")
        scanner.feed(b"\ndef\r\n")
        self.assertIsNone(scanner.fault)

    def test_smuggled_end_is_not_an_end(self) -> None:
        """Only CRLF.CRLF ends the message: a bare-LF variant leaves it open."""
        scanner = self.scanner(1000)
        result = scanner.feed(b"a\n.\nMAIL FROM:<evil@x>\r\n")
        self.assertIsNone(result.rest)
        result = scanner.feed(b"\r\n.\r\n")
        self.assertEqual(result.rest, b"")


class SizeTests(_ScannerCase):
    """A body larger than the limit is a fault; one at the limit is not."""

    def test_at_limit(self) -> None:
        """A 10-byte body (before the '.' line) passes a 10-byte limit."""
        scanner = self.scanner(10)
        scanner.feed(b"12345678\r\n.\r\n")
        self.assertIsNone(scanner.fault)

    def test_over_limit(self) -> None:
        """One byte more is refused."""
        scanner = self.scanner(10)
        scanner.feed(b"123456789\r\n.\r\n")
        self.assertIs(scanner.fault, BodyFault.TOO_BIG)

    def test_over_limit_before_the_end(self) -> None:
        """The fault is known as soon as the limit is passed, before end-of-data."""
        scanner = self.scanner(10)
        result = scanner.feed(b"x" * 20)
        self.assertIsNone(result.rest)
        self.assertIs(scanner.fault, BodyFault.TOO_BIG)

    def test_at_limit_with_the_dot_in_the_body_read(self) -> None:
        """A body at the limit passes when its final dot comes in the same read as the body."""
        for chunks in (
            [b"12345678\r\n.", b"\r\n"],
            [b"12345678\r\n.\r", b"\n"],
            [b"12345678\r\n", b".\r\n"],
        ):
            scanner = self.scanner(10)
            body, rest = feed_all(scanner, chunks)
            self.assertEqual((body, rest, scanner.fault), (b"12345678\r\n.\r\n", b"", None))

    def test_over_limit_with_the_dot_in_the_body_read(self) -> None:
        """One byte over the limit is refused, whichever read the final dot comes in."""
        for chunks in ([b"123456789\r\n.", b"\r\n"], [b"123456789\r\n.\r\n"]):
            scanner = self.scanner(10)
            feed_all(scanner, chunks)
            self.assertIs(scanner.fault, BodyFault.TOO_BIG, chunks)

    def test_bare_newline_wins_over_size(self) -> None:
        """A message both too big and with a bare LF is refused for the bare LF, however read."""
        data = b"x" * 20 + b"\nMAIL FROM:<a@b>\r\n.\r\n"
        for chunks in ([data], [data[:15], data[15:]]):
            scanner = self.scanner(10)
            feed_all(scanner, chunks)
            self.assertIs(scanner.fault, BodyFault.BARE_NEWLINE, chunks)


_BARE: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")


_Verdict = tuple[BodyFault | None, int, bytes, bytes | None]


def reference_scan(data: bytes, max_size: int) -> _Verdict:
    """What L{BodyScanner} must conclude from C{data} fed whole, written the slow, plain way.

    @return: the fault, the size (body octets including the marker), the body, the rest.
    """
    at = (b"\r\n" + data).find(END_OF_DATA)
    if at < 0:
        body, rest = data, None
    else:
        end = at + len(END_OF_DATA) - 2
        body, rest = data[:end], data[end:]
    # A CR that ends an unfinished message may yet be followed by its LF.
    judged = body[:-1] if rest is None and body.endswith(b"\r") else body
    if _BARE.search(judged):
        return BodyFault.BARE_NEWLINE, len(body), body, rest
    size = len(body)
    if rest is not None:
        size -= 3
    elif (b"\r\n" + body).endswith(b"\r\n."):
        size -= 1
    elif (b"\r\n" + body).endswith(b"\r\n.\r"):
        size -= 2
    fault = BodyFault.TOO_BIG if size > max_size else None
    return fault, len(body), body, rest


_PIECES: Final = st.sampled_from(
    [b"\r\n", b"\r", b"\n", b".", b"..", b"a", b"xyz", b"\r\n.\r\n", b"\r\n.", b".\r\n", b" "]
)


class PropertyTests(_ScannerCase):
    """One message, one verdict: how the bytes are cut into reads never changes the outcome."""

    def test_any_split_agrees_with_the_whole_and_the_reference(self) -> None:
        """Fault, size, forwarded bytes and rest are the same for any split and the whole."""

        # Built per test run: the Python and C twins each get their own property.
        @settings(max_examples=500, deadline=None)
        @given(
            data=st.lists(_PIECES, max_size=30).map(b"".join),
            max_size=st.integers(min_value=0, max_value=40),
            cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
        )
        def check(data: bytes, max_size: int, cuts: list[int]) -> None:
            points = sorted({min(cut, len(data)) for cut in cuts})
            chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
            whole = self.scanner(max_size)
            whole_body, whole_rest = feed_all(whole, [data])
            split = self.scanner(max_size)
            split_body, split_rest = feed_all(split, chunks)
            expected = reference_scan(data, max_size)
            self.assertEqual((whole.fault, whole.size, whole_body, whole_rest), expected)
            self.assertEqual((split.fault, split.size, split_body, split_rest), expected)

        check()


def _with_c(case: type[_ScannerCase]) -> type[_ScannerCase]:
    """C{case} again, with the C scanner (skipped where it was not built)."""
    attributes: dict[str, object] = {"__doc__": f"{case.__doc__} (C scanner)"}
    if scan_c is None:
        attributes["skip"] = "the C scanner (relaygate.smtp._scan) was not built"
    else:
        attributes["scan_chunk"] = staticmethod(scan_c)
    return type(case.__name__.replace("Tests", "CTests"), (case,), attributes)


EndOfDataCTests = _with_c(EndOfDataTests)
SmugglingCTests = _with_c(SmugglingTests)
SizeCTests = _with_c(SizeTests)
PropertyCTests = _with_c(PropertyTests)


class ScanEquivalenceTests(SynchronousTestCase):
    """The C scanner answers exactly as the pure-Python reference, chunk by chunk."""

    if scan_c is None:
        skip = "the C scanner (relaygate.smtp._scan) was not built"

    @settings(max_examples=1000, deadline=None)
    @given(data=st.lists(_PIECES, max_size=30).map(b"".join), pending_cr=st.booleans())
    def test_same_answer(self, data: bytes, pending_cr: bool) -> None:
        """Same end, same bare verdict, same pending CR, for any chunk and state."""
        assert scan_c is not None
        self.assertEqual(scan_c(data, pending_cr), scan_python(data, pending_cr))

    def test_accepts_memoryview(self) -> None:
        """Any contiguous buffer will do, as for the bytes methods."""
        from relaygate.smtp._scan import scan

        self.assertEqual(scan(memoryview(b"a\r\n.\r\nx"), False), (6, False, False))
