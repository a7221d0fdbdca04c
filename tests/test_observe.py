"""Tests for L{relaygate.observe}: the access events and where they are written."""

from __future__ import annotations

import json
import os
from typing import cast

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relaygate.config.errors import ConfigError
from relaygate.config.load import parse
from relaygate.config.model import Config
from relaygate.observe import (
    AccessLogFile,
    AccessLogService,
    RecipientOutcome,
    SessionRecord,
    TransactionRecord,
    use_access_log_file,
)
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
        self.assertEqual((first["time"], second["time"]), (101.0, 102.0))
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

    def test_service_opens_and_closes(self) -> None:
        """The service sends events to the file while it runs."""
        service = AccessLogService(self.path)
        service.startService()
        session, tx = _records()
        tx.emit(session, now=101.0)
        service.stopService()
        tx.emit(session, now=101.0)
        self.assertEqual(len(self.lines()), 1)

    def test_client_text_is_escaped(self) -> None:
        """A client's control bytes and quotes cannot break a line."""
        log = AccessLogFile(self.path)
        self.addCleanup(log.close)
        log.write({"helo": 'x\r\n{"kind":"forged"}\udcff'})
        [line] = self.lines()
        self.assertEqual(line["helo"], 'x\r\n{"kind":"forged"}\udcff')


class AccessLogConfigTests(SynchronousTestCase):
    """C{[server] access_log}: read relative to the config file, and opened by the service tree."""

    def config(self, path: str = "/etc/relaygate/relaygate.toml", **server: object) -> Config:
        data = {
            "server": {"name": "gw.test", **server},
            "listen": [{"protocol": "smtp", "address": "127.0.0.1:0"}],
            "route": [{"match": "*", "backends": ["127.0.0.1:25"]}],
        }
        return parse(data, path)

    def test_default_is_the_twistd_log(self) -> None:
        """Without the key, access events go to the global log."""
        self.assertEqual(self.config().server.access_log, "")

    def test_relative_to_the_config_file(self) -> None:
        """A relative path is under the config file's directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        config = self.config(os.path.join(directory, "relaygate.toml"), access_log="access.log")
        self.assertEqual(config.server.access_log, os.path.abspath(f"{directory}/access.log"))

    def test_missing_directory_is_refused(self) -> None:
        """A file in a directory that does not exist fails before anything listens."""
        with self.assertRaises(ConfigError) as caught:
            self.config(access_log="/nonexistent-dir/access.log")
        self.assertIn("server.access_log", str(caught.exception))

    def test_service_tree_writes_there(self) -> None:
        """build_service opens the file while running: an access event lands in it."""
        path = os.path.abspath(self.mktemp())
        config = self.config(access_log=path)
        top = build_service(config, cast(IGatewayReactor, MemoryReactorClock()))
        [first, *_] = list(top)
        self.assertIsInstance(first, AccessLogService)
        first.startService()
        self.addCleanup(use_access_log_file, None)
        session, tx = _records()
        tx.emit(session, now=101.0)
        first.stopService()
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.read())["kind"], "smtp.transaction")
