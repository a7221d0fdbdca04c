"""Tests for L{relaygate.observe}: the access events and where they are written."""

from __future__ import annotations

import json
import os
from typing import Any, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relaygate.config.errors import ConfigError
from relaygate.config.load import parse
from relaygate.config.model import Config
from relaygate.observe import (
    AccessLogFile,
    RecipientOutcome,
    SessionRecord,
    TransactionRecord,
    add_access_observer,
    remove_access_observer,
    use_access_log_file,
)
from relaygate.ops.accesslog import AccessLogService
from relaygate.reactor import IGatewayReactor
from relaygate.service import build_service


def _records() -> tuple[SessionRecord, TransactionRecord]:
    session = SessionRecord("1f.2", "192.0.2.7:51000", "127.0.0.1:2525", started=100.0)
    session.helo = "client.example"
    tx = TransactionRecord(started=100.5, sender="a@example.org")
    tx.recipients.append(RecipientOutcome("b@example.org", "250 2.1.5 Ok"))
    tx.backend, tx.size, tx.final, tx.outcome = "127.0.0.1:25", 1024, "250 2.0.0 Ok", "delivered"
    return session, tx


class GlobalLogTests(SynchronousTestCase):
    """Without an access log file, access events are ordinary global log events."""

    def test_transaction_event_fields(self) -> None:
        """A transaction is one relaygate.access event with the documented fields."""
        session, tx = _records()
        with capturedLogs() as events:
            tx.emit(session, now=101.0)
        [event] = [e for e in events if e["log_namespace"] == "relaygate.access"]
        expected = {
            "kind": "smtp.transaction",
            "session_id": "1f.2",
            "client": "192.0.2.7:51000",
            "listener": "127.0.0.1:2525",
            "tls": "",
            "helo": "client.example",
            "user": "",
            "sender": "a@example.org",
            "recipients": [("b@example.org", "250 2.1.5 Ok")],
            "rcpt_count": 1,
            "accepted": 1,
            "backend": "127.0.0.1:25",
            "backend_tls": "",
            "size": 1024,
            "final": "250 2.0.0 Ok",
            "outcome": "delivered",
            "duration": 0.5,
        }
        self.assertEqual({key: event.get(key) for key in expected}, expected)


class AccessLogFileTests(SynchronousTestCase):
    """With an access log file, each event is one JSON line there and nothing else."""

    def setUp(self) -> None:
        self.path = self.mktemp()

    def lines(self) -> list[dict[str, object]]:
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def test_events_go_to_the_file_only(self) -> None:
        """Two events, two lines with their fields; the global log sees neither."""
        use_access_log_file(self.path)
        self.addCleanup(use_access_log_file, None)
        session, tx = _records()
        with capturedLogs() as events:
            tx.emit(session, now=101.0)
            session.end = "quit"
            session.emit("smtp", now=102.0)
        self.assertEqual([e for e in events if e["log_namespace"] == "relaygate.access"], [])
        first, second = self.lines()
        self.assertEqual(
            (first["kind"], first["recipients"], first["size"]),
            ("smtp.transaction", [["b@example.org", "250 2.1.5 Ok"]], 1024),
        )
        self.assertEqual((second["kind"], second["end"]), ("smtp.session", "quit"))
        self.assertEqual(
            (first["time"], second["time"]),
            ("1970-01-01T00:01:41.000+00:00", "1970-01-01T00:01:42.000+00:00"),
        )
        self.assertNotIn("message", first)
        self.assertFalse(any(key.startswith("log_") for key in first))

    def test_back_to_the_global_log(self) -> None:
        """use_access_log_file(None) closes the file and restores the global log."""
        use_access_log_file(self.path)
        use_access_log_file(None)
        session, tx = _records()
        with capturedLogs() as events:
            tx.emit(session, now=101.0)
        self.assertEqual(len([e for e in events if e["log_namespace"] == "relaygate.access"]), 1)
        self.assertEqual(os.path.getsize(self.path), 0)

    def test_two_writers_append_whole_lines(self) -> None:
        """Two processes' files on one path (workers) each append whole lines, in order."""
        first, second = AccessLogFile(self.path), AccessLogFile(self.path)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        for index in range(3):
            first.write({"n": index, "by": "first"})
            second.write({"n": index, "by": "second"})
        self.assertEqual(
            [(line["by"], line["n"]) for line in self.lines()],
            [(by, n) for n in range(3) for by in ("first", "second")],
        )

    def test_client_text_is_escaped(self) -> None:
        """A client's control bytes and quotes cannot break a line."""
        log = AccessLogFile(self.path)
        self.addCleanup(log.close)
        log.write({"helo": 'x\r\n{"kind":"forged"}\udcff'})
        [line] = self.lines()
        self.assertEqual(line["helo"], 'x\r\n{"kind":"forged"}\udcff')

    def test_client_crlf_stays_in_one_line(self) -> None:
        """CR and LF in a client's HELO and sender reach the file escaped: one event, one line."""
        use_access_log_file(self.path)
        self.addCleanup(use_access_log_file, None)
        session, tx = _records()
        session.helo = 'evil\r\n{"kind":"smtp.transaction","outcome":"delivered"}'
        tx.sender = "a@example.org\nforged"
        tx.emit(session, now=101.0)
        with open(self.path, "rb") as f:
            raw = f.read()
        self.assertEqual(raw.count(b"\n"), 1)
        self.assertNotIn(b"\r", raw)
        self.assertIn(b'"helo":"evil\\r\\n{\\"kind\\":', raw)
        [line] = self.lines()
        self.assertEqual((line["helo"], line["sender"]), (session.helo, tx.sender))

    def test_reopen_after_move(self) -> None:
        """After the file is moved away, reopen starts a new file at the path."""
        log = AccessLogFile(self.path)
        self.addCleanup(log.close)
        log.write({"n": "before"})
        os.rename(self.path, self.path + ".1")
        log.write({"n": "late"})
        log.reopen()
        log.write({"n": "after"})
        with open(self.path + ".1", encoding="utf-8") as f:
            self.assertEqual([json.loads(line)["n"] for line in f], ["before", "late"])
        self.assertEqual([line["n"] for line in self.lines()], ["after"])

    def test_closed_file_drops(self) -> None:
        """A closed file writes nothing."""
        log = AccessLogFile(self.path)
        log.close()
        log.write({"n": 1})
        self.assertEqual(os.path.getsize(self.path), 0)

    def test_write_error_goes_to_text_log(self) -> None:
        """A failed write is reported as an error event outside the access namespace."""
        log = AccessLogFile(self.path)
        self.addCleanup(log.close)
        events: list[dict[str, Any]] = []
        self.patch(AccessLogFile, "_log", Logger(observer=cast(ILogObserver, events.append)))

        def failing(fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        self.patch(os, "write", failing)
        log.write({"n": 1})
        self.assertEqual(events[0]["error"], "No space left on device")
        self.assertNotEqual(events[0]["log_namespace"], "relaygate.access")

    def test_observers_see_every_event(self) -> None:
        """Access observers (the metrics) get each event's fields, file or global log."""
        seen: list[str] = []

        def observer(fields: dict[str, Any]) -> None:
            seen.append(fields["kind"])

        add_access_observer(observer)
        self.addCleanup(remove_access_observer, observer)
        session, tx = _records()
        with capturedLogs():
            tx.emit(session, now=101.0)
        use_access_log_file(self.path)
        self.addCleanup(use_access_log_file, None)
        tx.emit(session, now=102.0)
        remove_access_observer(observer)
        tx.emit(session, now=103.0)
        self.assertEqual(seen, ["smtp.transaction", "smtp.transaction"])
        self.assertEqual(len(self.lines()), 2)


class AccessLogConfigTests(SynchronousTestCase):
    """C{[log] access} is opened by the service tree (the key itself: tests.test_ops_config)."""

    def test_server_access_log_is_refused(self) -> None:
        """The key is C{[log] access}; C{[server] access_log} is an unknown key."""
        data = {
            "server": {"name": "gw.test", "access_log": "access.log"},
            "listen": [{"protocol": "smtp", "address": "127.0.0.1:0"}],
            "route": [{"match": "*", "backends": ["127.0.0.1:25"]}],
        }
        with self.assertRaises(ConfigError) as caught:
            parse(data, "/etc/relaygate/relaygate.toml")
        self.assertIn("server.access_log", str(caught.exception))

    def test_service_tree_writes_there(self) -> None:
        """build_service opens the file while running: an access event lands in it."""
        path = os.path.abspath(self.mktemp())
        data = {
            "server": {"name": "gw.test"},
            "listen": [{"protocol": "smtp", "address": "127.0.0.1:0"}],
            "route": [{"match": "*", "backends": ["127.0.0.1:25"]}],
            "log": {"access": path},
        }
        config: Config = parse(data, "/etc/relaygate/relaygate.toml")
        top = build_service(config, cast(IGatewayReactor, MemoryReactorClock()))
        [service] = [s for s in top if isinstance(s, AccessLogService)]
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        session, tx = _records()
        tx.emit(session, now=101.0)
        service.stopService()
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.read())["kind"], "smtp.transaction")
