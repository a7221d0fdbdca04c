"""Access logging: one structured event per SMTP transaction and per session.

Events go to the ``relaygate.access`` namespace with every field an operator needs, so a JSON
observer (``twistd --logger``) or a text log both carry the whole story of a message. The
fields are documented in docs/logging.md. No password ever appears in an event.

By default they go to the global log like every other event, where twistd's text observer
renders each one (a time stamp and a format substitution: a few percent of a small message's
CPU). With C{[log] access} (L{use_access_log_file}, opened by L{relaygate.ops.accesslog}) they
go only there, one JSON line per event written with one C{write(2)} on an C{O_APPEND}
descriptor: nothing is rendered as text, and several processes can share the file, since each
line lands whole. Either way every L{add_access_observer} observer (the metrics) sees them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.logger import Logger, LogLevel

access_log = Logger(namespace="relaygate.access")


class AccessLogFile:
    """An access log file: one JSON object per line, appended with a single C{write(2)}.

    A write to a file opened with C{O_APPEND} is atomic with respect to other appenders, so
    worker processes each open the file and write their own lines. L{reopen} starts a new file
    at C{path} after logrotate moved the old one away (SIGUSR1, L{relaygate.ops.accesslog}).
    """

    _log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self.reopen()

    def reopen(self) -> None:
        """Open C{path} afresh (created if missing) and close the previous descriptor."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def write(self, fields: dict[str, Any]) -> None:
        """Append C{fields} as one line of JSON (client text escaped by the encoder)."""
        if self._fd is None:
            return
        line = (_encode(fields) + "\n").encode("utf-8", "backslashreplace")
        try:
            # One write: O_APPEND places the whole line at the end even with other writers.
            written = os.write(self._fd, line)
            if written < len(line):  # a full disk; write what remains rather than cut the line
                os.write(self._fd, line[written:])
        except OSError as e:
            # Not an access event, so it goes to the text log.
            self._log.error("cannot write {path}: {error}", path=self.path, error=e.strerror)

    def close(self) -> None:
        """Close the file; later events are dropped."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_encode = json.JSONEncoder(separators=(",", ":"), default=repr).encode

AccessObserver = Callable[[dict[str, Any]], None]
"""Called with each access event's fields as built (no C{log_*} keys, no C{time})."""


class _Destination:
    """Where this process's access events go: the global log, or an L{AccessLogFile}."""

    file: AccessLogFile | None = None
    observers: list[AccessObserver] = []


def use_access_log_file(path: str | None) -> AccessLogFile | None:
    """Send access events to the JSON-lines file C{path}, or back to the global log (None).

    @return: the open file, for its owner to reopen and close.
    """
    previous = _Destination.file
    _Destination.file = AccessLogFile(path) if path else None
    if previous is not None:
        previous.close()
    return _Destination.file


def add_access_observer(observer: AccessObserver) -> None:
    """Also give every access event to C{observer} (the metrics), wherever it is written."""
    _Destination.observers.append(observer)


def remove_access_observer(observer: AccessObserver) -> None:
    """Undo L{add_access_observer}."""
    if observer in _Destination.observers:
        _Destination.observers.remove(observer)


def _iso_time(now: float) -> str:
    """C{now} as ISO 8601 in UTC, to the millisecond: what log shippers parse."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")


def publish(text: str, fields: dict[str, Any], now: float) -> None:
    """Log one access event, built once as C{fields}, at C{now}.

    @param text: the format string for a text log (field names in braces, never client text).
    """
    for observer in _Destination.observers:
        observer(fields)
    file = _Destination.file
    if file is None:
        # What Logger.info would add, on the dict already built (Logger.emit copies the
        # keywords into a new one and checks the level against every LogLevel first).
        fields.update(
            log_logger=access_log,
            log_level=LogLevel.info,
            log_namespace=access_log.namespace,
            log_source=None,
            log_format=text,
            log_time=now,
        )
        access_log.observer(fields)
    else:
        # The text is not rendered: every fact of the line is a field of its own.
        fields["time"] = _iso_time(now)
        file.write(fields)


@dataclass
class RecipientOutcome:
    """One RCPT: the address and the reply the client got for it."""

    address: str
    reply: str


@dataclass
class TransactionRecord:
    """Facts about one SMTP transaction (MAIL to the final reply), gathered as it runs."""

    started: float
    sender: str = ""
    recipients: list[RecipientOutcome] = field(default_factory=list)
    backend: str = ""
    backend_tls: str = ""
    size: int = 0
    final: str = ""
    outcome: str = "abandoned"

    def emit(self, session: SessionRecord, now: float) -> None:
        """Log this transaction as one C{relaygate.access} event."""
        publish(
            "smtp transaction from {client} <{sender}> to {rcpt_count} recipient(s) via "
            "{backend}: {outcome} {final}",
            dict(
                kind="smtp.transaction",
                session_id=session.session_id,
                client=session.client,
                listener=session.listener,
                tls=session.tls,
                helo=session.helo,
                user=session.user,
                sender=self.sender,
                recipients=[(r.address, r.reply) for r in self.recipients],
                rcpt_count=len(self.recipients),
                accepted=sum(1 for r in self.recipients if r.reply.startswith("2")),
                backend=self.backend,
                backend_tls=self.backend_tls,
                size=self.size,
                final=self.final,
                outcome=self.outcome,
                duration=round(now - self.started, 6),
            ),
            now,
        )


@dataclass
class SessionRecord:
    """Facts about one client connection, logged when it closes."""

    session_id: str
    client: str
    listener: str
    started: float
    tls: str = ""
    helo: str = ""
    user: str = ""
    transactions: int = 0
    delivered: int = 0
    bytes_in: int = 0
    end: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def emit(self, protocol: str, now: float) -> None:
        """Log this session as one C{relaygate.access} event."""
        publish(
            "{protocol} session {session_id} from {client} closed: {end}",
            dict(
                kind=f"{protocol}.session",
                protocol=protocol,
                session_id=self.session_id,
                client=self.client,
                listener=self.listener,
                tls=self.tls,
                helo=self.helo,
                user=self.user,
                transactions=self.transactions,
                delivered=self.delivered,
                bytes_in=self.bytes_in,
                end=self.end,
                duration=round(now - self.started, 6),
                **self.extra,
            ),
            now,
        )
