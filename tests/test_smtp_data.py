"""Tests for L{relaygate.smtp.data}: end-of-data, bare CR/LF refusal and size, chunk by chunk."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaygate.smtp.data import BodyFault, BodyScanner


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


class EndOfDataTests(SynchronousTestCase):
    """The message ends exactly at CRLF.CRLF, wherever the chunks are cut."""

    def test_end_found_in_one_chunk(self) -> None:
        """The body includes the marker; what follows is returned as the rest."""
        scanner = BodyScanner(1000)
        result = scanner.feed(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        self.assertEqual(result.body, b"Subject: x\r\n\r\nhello\r\n.\r\n")
        self.assertEqual(result.rest, b"QUIT\r\n")
        self.assertIsNone(scanner.fault)

    def test_end_found_across_every_split(self) -> None:
        """The marker is found however it is split across chunks."""
        data = b"line one\r\nline two\r\n.\r\nMAIL FROM:<a@b>\r\n"
        for chunks in every_split(data):
            body, rest = feed_all(BodyScanner(1000), chunks)
            self.assertEqual(
                (body, rest), (b"line one\r\nline two\r\n.\r\n", b"MAIL FROM:<a@b>\r\n"), chunks
            )

    def test_empty_message(self) -> None:
        """A lone '.' line right after DATA ends an empty message."""
        result = BodyScanner(1000).feed(b".\r\nNOOP\r\n")
        self.assertEqual((result.body, result.rest), (b".\r\n", b"NOOP\r\n"))

    def test_dot_stuffed_lines_do_not_end(self) -> None:
        """'..' at a line start is a stuffed dot, passed on as is."""
        scanner = BodyScanner(1000)
        result = scanner.feed(b"..\r\n.. \r\n..x\r\n")
        self.assertEqual((result.body, result.rest), (b"..\r\n.. \r\n..x\r\n", None))
        self.assertIsNone(scanner.fault)

    def test_dot_inside_a_line_does_not_end(self) -> None:
        """A '.' that is not alone on its line does not end the message."""
        result = BodyScanner(1000).feed(b"a\r\n.x\r\n x.\r\n")
        self.assertIsNone(result.rest)


class SmugglingTests(SynchronousTestCase):
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
                scanner = BodyScanner(1000)
                feed_all(scanner, chunks)
                self.assertIs(scanner.fault, BodyFault.BARE_NEWLINE, (case, chunks))

    def test_crlf_split_between_chunks_is_not_a_fault(self) -> None:
        """A CR at the end of one chunk and LF at the start of the next make a CRLF."""
        scanner = BodyScanner(1000)
        scanner.feed(b"abc\r")
        scanner.feed(b"\ndef\r\n")
        self.assertIsNone(scanner.fault)

    def test_smuggled_end_is_not_an_end(self) -> None:
        """Only CRLF.CRLF ends the message: a bare-LF variant leaves it open."""
        scanner = BodyScanner(1000)
        result = scanner.feed(b"a\n.\nMAIL FROM:<evil@x>\r\n")
        self.assertIsNone(result.rest)
        result = scanner.feed(b"\r\n.\r\n")
        self.assertEqual(result.rest, b"")


class SizeTests(SynchronousTestCase):
    """A body larger than the limit is a fault; one at the limit is not."""

    def test_at_limit(self) -> None:
        """A 10-byte body (before the '.' line) passes a 10-byte limit."""
        scanner = BodyScanner(10)
        scanner.feed(b"12345678\r\n.\r\n")
        self.assertIsNone(scanner.fault)

    def test_over_limit(self) -> None:
        """One byte more is refused."""
        scanner = BodyScanner(10)
        scanner.feed(b"123456789\r\n.\r\n")
        self.assertIs(scanner.fault, BodyFault.TOO_BIG)

    def test_over_limit_before_the_end(self) -> None:
        """The fault is known as soon as the limit is passed, before end-of-data."""
        scanner = BodyScanner(10)
        result = scanner.feed(b"x" * 20)
        self.assertIsNone(result.rest)
        self.assertIs(scanner.fault, BodyFault.TOO_BIG)
