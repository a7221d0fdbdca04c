"""The twistd text log, made cheaper: lines rendered with less work, and workers' lines copied in.

twistd's default observer (L{twisted.logger.textFileLogObserver}) writes each event as one
"classic" line: an RFC 3339 time stamp, the system in brackets (the event's C{log_system}, or its
namespace and level), the formatted message, and a tab before each continuation line. For every
event Twisted's C{formatTime} builds a time zone and two datetimes, and its C{Formatter}
substitutes the fields in Python. L{ClassicFormatter} writes the same text with less: the time
stamp is kept for the second it names, and access events (whose formats name plain fields only,
never client text) are substituted by C{str.format_map}.

With C{[server] workers} above 1 each worker renders its own events with L{ClassicFormatter} (its
system tag carries C{worker=N}) and writes them to the pipe to the parent; the parent copies
whole lines into its log in batches (L{LineCopier}: one read, one write), with no work per event.
L{TextLog} is the parent's handle on twistd's observer: it writes those lines into the same file,
so twistd's rotation (by size, and on SIGUSR1) covers them too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogPublisher,
    eventAsText,
    formatTime,
    globalLogPublisher,
    timeFormatRFC3339,
)
from typing_extensions import override
from zope.interface import implementer

ACCESS_NAMESPACE = "relaygate.access"
_RENDERED_KEY = "relaygate_rendered_lines"
"""An event holding lines already rendered (a worker's), written by L{TextLog} as they are."""


def _system(event: LogEvent) -> str:
    """The bracketed part of a classic line, as C{twisted.logger._format._formatSystem} does."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        name = "-" if level is None else level.name
        return f"{event.get('log_namespace', '-')}#{name}"
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


class ClassicFormatter:
    """Renders an event as L{twisted.logger.formatEventAsClassicLogText} does, with less work.

    @param tag: added to the system in brackets (C{" worker=1"} in a worker), so a line tells
        which process logged it.
    """

    def __init__(self, tag: str = "") -> None:
        self._tag = tag
        self._second = math.nan
        self._stamp = ""

    def time_stamp(self, when: float | None) -> str:
        """C{formatTime(when)}: the text names whole seconds, so one per second is made."""
        if when is None:
            return "-"
        second = math.floor(when)
        if second != self._second:
            self._stamp = formatTime(when, timeFormatRFC3339)
            self._second = second
        return self._stamp

    def __call__(self, event: LogEvent) -> str | None:
        """The event's line (with its continuation lines), or None when it has no text."""
        text: str | None = None
        log_format = event.get("log_format")
        if (
            event.get("log_namespace") == ACCESS_NAMESPACE
            and isinstance(log_format, str)
            and "log_failure" not in event
        ):
            try:
                # Our access formats name plain fields: the same text as Twisted's Formatter.
                text = log_format.format_map(event)
            except Exception:
                text = None
        if text is None:
            text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        if not text:
            return None
        line = f"{self.time_stamp(event.get('log_time'))} [{_system(event)}{self._tag}] {text}"
        return line.replace("\n", "\n\t") + "\n"


def renders_as_classic(format_event: Callable[[LogEvent], str | None]) -> bool:
    """Whether C{format_event} writes what L{ClassicFormatter} writes (twistd's text log does).

    Checked on sample events, so an observer set up another way (another time format, say) is
    left alone.
    """
    mine = ClassicFormatter()
    samples: list[LogEvent] = [
        dict(
            log_format="sample {value!r} {count}",
            value="a\nb",
            count=3,
            log_time=1_000_000_000.25,
            log_namespace=ACCESS_NAMESPACE,
            log_level=LogLevel.info,
        ),
        dict(log_format="sample", log_time=1_700_000_000.5, log_system="sample,1,127.0.0.1"),
        dict(log_format="sample"),
    ]
    try:
        return all(format_event(dict(event)) == mine(dict(event)) for event in samples)
    except Exception:
        return False


class TextLog:
    """twistd's text observer, rendering with L{ClassicFormatter} and taking rendered lines."""

    def __init__(self, observer: FileLogObserver) -> None:
        self._observer = observer
        self._format = ClassicFormatter()
        # It stays for the life of the process: a worker's last lines arrive after the
        # services stopped, and L{write} needs it.
        observer.formatEvent = self._format_event

    def _format_event(self, event: LogEvent) -> str | None:
        rendered: str | None = event.get(_RENDERED_KEY)
        if rendered is not None:
            return rendered
        return self._format(event)

    def write(self, lines: str) -> None:
        """Append whole, rendered lines to the log as they are (one write and flush)."""
        # The observer writes (encoding for a binary file such as twistd's LogFile, which
        # rotates by size) and flushes; no other observer sees this event.
        self._observer({_RENDERED_KEY: lines})


def find_text_log(publisher: LogPublisher = globalLogPublisher) -> TextLog | None:
    """twistd's text log observer among C{publisher}'s, as a L{TextLog}; None without one.

    twistd offers no handle on the observer it installs, so the publisher's list is read
    (C{LogPublisher._observers}, stable since Twisted 15.2). A C{--logger} or C{--syslog}
    observer, or a text observer that renders differently, is not taken.
    """
    observers: list[Any] = getattr(publisher, "_observers", [])
    for observer in observers:
        if not isinstance(observer, FileLogObserver):
            continue
        installed = getattr(observer.formatEvent, "__self__", None)
        if isinstance(installed, TextLog):
            return installed
        if renders_as_classic(observer.formatEvent):
            return TextLog(observer)
    return None


class TextLogService(Service):
    """Once started, twistd's text log (when it is one) renders with L{ClassicFormatter}.

    @ivar text_log: the L{TextLog}, or None when twistd logs another way (or before start).
    """

    def __init__(self, publisher: LogPublisher = globalLogPublisher) -> None:
        self._publisher = publisher
        self.text_log: TextLog | None = None

    @override
    def startService(self) -> None:
        super().startService()
        self.text_log = find_text_log(self._publisher)


class LineCopier:
    """Copies a stream of rendered lines to C{write} in batches of whole lines.

    Each chunk read from a worker's pipe becomes one C{write} of the complete lines in it; a
    line cut by the read waits for its end, so a worker's line never mixes with another's.
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        """Hand on every complete line of C{data} (with what was held back) in one write."""
        end = data.rfind(b"\n") + 1
        if not end:
            self._partial += data
            return
        if self._partial:
            end += len(self._partial)
            data = self._partial + data
        self._partial = data[end:]
        self._write(data[:end].decode("utf-8", "replace"))

    def flush(self) -> None:
        """The stream ended: hand on a last line that had no line end, ending it."""
        if self._partial:
            partial, self._partial = self._partial, b""
            self._write(partial.decode("utf-8", "replace") + "\n")


def write_all(fd: int, data: bytes) -> None:
    """Write all of C{data} to the blocking descriptor C{fd} (one C{write(2)} unless a signal
    cuts it short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@implementer(ILogObserver)
class LineWriter:
    """A worker's log observer: each event rendered as twistd's line, tagged with the worker,
    and written to C{fd} (the pipe to the parent) with one C{write(2)}."""

    def __init__(self, fd: int, worker: int) -> None:
        self._fd = fd
        self._format = ClassicFormatter(f" worker={worker}")

    def __call__(self, event: LogEvent) -> None:
        """Render and write C{event}."""
        text = self._format(event)
        if text:
            write_all(self._fd, text.encode("utf-8", "backslashreplace"))
