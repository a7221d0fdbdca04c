"""Tests for L{relaygate.textlog}: twistd's lines rendered cheaper, and workers' lines copied."""

from __future__ import annotations

import io
import os

from twisted.logger import (
    LogEvent,
    LogLevel,
    LogPublisher,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.textlog import (
    ClassicFormatter,
    LineCopier,
    LineWriter,
    TextLog,
    find_text_log,
    renders_as_classic,
)

WHEN = 1_796_000_000.75
STAMP = formatTime(WHEN)


def access_event(**fields: object) -> LogEvent:
    """An access event as L{relaygate.observe.publish} emits it."""
    event: LogEvent = dict(
        log_format="smtp transaction from {client} <{sender}> to {rcpt_count} recipient(s)",
        client="127.0.0.1:4000",
        sender="a@example.org",
        rcpt_count=2,
        log_namespace="relaygate.access",
        log_level=LogLevel.info,
        log_time=WHEN,
    )
    event.update(fields)
    return event


def failure_event() -> LogEvent:
    """An event of C{log.failure}: the message, then the traceback."""
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    return dict(
        log_format="it broke: {what!r}",
        what="x\ny",
        log_failure=failure,
        log_namespace="relaygate.smtp.front.SMTPFront",
        log_level=LogLevel.critical,
        log_time=WHEN,
    )


class ClassicFormatterTests(SynchronousTestCase):
    """L{ClassicFormatter} writes what twistd's text log writes."""

    def test_same_text_as_twisted(self) -> None:
        """Access events, failures, legacy systems and empty events render as Twisted's do."""
        events: list[LogEvent] = [
            access_event(),
            access_event(client="bad {client} text\r\n", rcpt_count=None),
            access_event(log_format="{missing} field"),
            failure_event(),
            dict(log_format="(TCP Port 2525 Closed)", log_system="-", log_time=WHEN),
            dict(log_format="no time, no level", log_namespace="x"),
            dict(log_namespace="x", log_time=WHEN),
            dict(log_format="", log_time=WHEN),
        ]
        formatter = ClassicFormatter()
        for event in events:
            self.assertEqual(formatter(dict(event)), formatEventAsClassicLogText(dict(event)))

    def test_access_line(self) -> None:
        """An access event is one line: time stamp, namespace and level, the fields."""
        self.assertEqual(
            ClassicFormatter()(access_event()),
            f"{STAMP} [relaygate.access#info] smtp transaction from 127.0.0.1:4000 "
            "<a@example.org> to 2 recipient(s)\n",
        )

    def test_worker_tag(self) -> None:
        """A worker's lines carry its number in the system tag, continuation lines too."""
        self.assertEqual(
            ClassicFormatter(" worker=1")(
                dict(log_format="two\nlines", log_system="-", log_time=WHEN)
            ),
            f"{STAMP} [- worker=1] two\n\tlines\n",
        )

    def test_time_stamp_per_second(self) -> None:
        """Each event gets its own second's time stamp, kept or not."""
        formatter = ClassicFormatter()
        for when in (WHEN, WHEN + 0.2, WHEN + 0.3, WHEN + 3600.0, WHEN - 86400.0, WHEN):
            self.assertEqual(formatter.time_stamp(when), formatTime(when))
        self.assertEqual(formatter.time_stamp(None), "-")

    def test_recognises_twistd_observer(self) -> None:
        """twistd's text observer renders as classic lines; one without time stamps does not."""
        self.assertTrue(renders_as_classic(textFileLogObserver(io.StringIO()).formatEvent))
        no_time = textFileLogObserver(io.StringIO(), timeFormat=None)
        self.assertFalse(renders_as_classic(no_time.formatEvent))


class TextLogTests(SynchronousTestCase):
    """L{find_text_log} takes twistd's text observer and writes rendered lines through it."""

    def test_writes_lines_as_they_are(self) -> None:
        """Rendered lines go to the file as they are; events still render as before."""
        out = io.StringIO()
        publisher = LogPublisher(textFileLogObserver(out))
        text_log = find_text_log(publisher)
        assert text_log is not None
        text_log.write("2026-12-06T10:00:00+0000 [x#info worker=1] one\n")
        publisher(access_event())
        self.assertEqual(
            out.getvalue(),
            "2026-12-06T10:00:00+0000 [x#info worker=1] one\n"
            + str(formatEventAsClassicLogText(access_event())),
        )

    def test_binary_file(self) -> None:
        """A binary file (twistd's LogFile) gets the lines as UTF-8."""
        out = io.BytesIO()
        text_log = find_text_log(LogPublisher(textFileLogObserver(out)))
        assert text_log is not None
        text_log.write("- [x worker=0] caf\N{LATIN SMALL LETTER E WITH ACUTE}\n")
        self.assertEqual(out.getvalue(), "- [x worker=0] caf\u00e9\n".encode())

    def test_found_once(self) -> None:
        """Looking again finds the same handle, not a second wrapper."""
        publisher = LogPublisher(textFileLogObserver(io.StringIO()))
        first = find_text_log(publisher)
        self.assertIsInstance(first, TextLog)
        self.assertIs(find_text_log(publisher), first)

    def test_other_observers_left_alone(self) -> None:
        """A JSON observer (C{twistd --logger}) is no text log."""
        self.assertIsNone(find_text_log(LogPublisher(jsonFileLogObserver(io.StringIO()))))
        self.assertIsNone(find_text_log(LogPublisher()))


class LineCopierTests(SynchronousTestCase):
    """L{LineCopier} hands on whole lines only, one write per chunk that completes any."""

    def setUp(self) -> None:
        self.writes: list[str] = []
        self.copier = LineCopier(self.writes.append)

    def test_whole_lines_in_one_write(self) -> None:
        """A chunk of complete lines is one write."""
        self.copier.data_received(b"a 1\nb 2\n")
        self.assertEqual(self.writes, ["a 1\nb 2\n"])

    def test_cut_line_waits_for_its_end(self) -> None:
        """The part of a line after a chunk's last line end waits for the next chunk."""
        self.copier.data_received(b"a 1\nb")
        self.copier.data_received(b" 2")
        self.copier.data_received(b"\n\tmore\nc")
        self.assertEqual(self.writes, ["a 1\n", "b 2\n\tmore\n"])
        self.copier.flush()
        self.assertEqual(self.writes, ["a 1\n", "b 2\n\tmore\n", "c\n"])
        self.copier.flush()
        self.assertEqual(len(self.writes), 3)

    def test_utf8_cut_between_reads(self) -> None:
        """A character whose bytes two reads split arrives whole."""
        data = "\N{LATIN SMALL LETTER E WITH ACUTE}\n".encode()
        self.copier.data_received(data[:1])
        self.copier.data_received(data[1:])
        self.assertEqual(self.writes, ["\u00e9\n"])


class LineWriterTests(SynchronousTestCase):
    """L{LineWriter} writes each event's lines to its descriptor."""

    def test_writes_rendered_event(self) -> None:
        """One event, its tagged line on the pipe."""
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        writer = LineWriter(write_end, 3)
        writer(access_event())
        writer(dict(log_namespace="silent", log_time=WHEN))
        self.assertEqual(
            os.read(read_end, 4096).decode(),
            f"{STAMP} [relaygate.access#info worker=3] smtp transaction from 127.0.0.1:4000 "
            "<a@example.org> to 2 recipient(s)\n",
        )
