"""Tests for certificate reloads: L{relaygate.tls.server.ServerTLS.reload} and SIGHUP."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from typing import Any

from twisted.logger import capturedLogs

from relaygate.config.tls import TLSConfig
from relaygate.tls.reload import ReloadOnSIGHUP
from relaygate.tls.server import ServerTLS
from tests.certs import issue
from tests.tls_harness import (
    PKITestCase,
    TestClient,
    errors,
    loopback,
    replace_file,
    served_names,
    write_file,
)


class ReloadTests(PKITestCase):
    """Renewed certificates are picked up; broken ones leave the old one in service."""

    def test_directory_renewed_file_used_on_next_handshake(self) -> None:
        """Replacing C{NAME.pem} changes the certificate of the next handshake for NAME."""
        directory = self.certificate_directory({"mail.example.org.pem": self.pki.server})
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        client = TestClient(server_name="mail.example.org")
        self.assertEqual(
            served_names(loopback(creator, client)), ["localhost", "mail.example.org"]
        )
        renewed = issue(self.pki.ca, self.pki.directory, "renewed", ["mail.example.org"])
        replace_file(renewed.combined, os.path.join(directory, "mail.example.org.pem"))
        self.assertEqual(served_names(loopback(creator, client)), ["mail.example.org"])

    def test_directory_new_file_used_without_reload(self) -> None:
        """A file added for a new name serves that name at once."""
        directory = self.certificate_directory({"default.pem": self.pki.server})
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        shutil.copyfile(self.pki.other.combined, os.path.join(directory, "other.example.net.pem"))
        link = loopback(creator, TestClient(server_name="other.example.net"))
        self.assertEqual(served_names(link), ["other.example.net"])

    def test_directory_broken_renewal_keeps_old_and_logs(self) -> None:
        """A renewed file with a mismatched key: the old one serves, and an error is logged."""
        directory = self.certificate_directory(
            {"default.pem": self.pki.other, "mail.example.org.pem": self.pki.server}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        client = TestClient(server_name="mail.example.org")
        loopback(creator, client)
        path = os.path.join(directory, "mail.example.org.pem")
        with (
            open(self.pki.other.key, "rb") as key,
            open(self.pki.wrong_name.certificate, "rb") as c,
        ):
            write_file(path, key.read() + c.read())
        with capturedLogs() as events:
            first = loopback(creator, client)
            second = loopback(creator, client)
        self.assertEqual(served_names(first), ["localhost", "mail.example.org"])
        self.assertEqual(served_names(second), ["localhost", "mail.example.org"])
        [error] = errors(events)
        self.assertEqual(error["path"], path)
        self.assertIn("does not match", error["reason"])
        self.assertEqual(error["outcome"], "the previous certificate stays in service")

    def test_single_file_changes_only_on_reload(self) -> None:
        """In single-file mode a renewed file is used after L{ServerTLS.reload}, not before."""
        creator = ServerTLS(self.file_config(), "smtp")
        renewed = issue(self.pki.ca, self.pki.directory, "renewed", ["renewed.example.org"])
        replace_file(renewed.certificate, self.pki.server.certificate)
        replace_file(renewed.key, self.pki.server.key)
        self.assertEqual(
            served_names(loopback(creator, TestClient())), ["localhost", "mail.example.org"]
        )
        self.assertTrue(creator.reload())
        self.assertEqual(served_names(loopback(creator, TestClient())), ["renewed.example.org"])

    def test_single_file_broken_reload_keeps_old_and_logs(self) -> None:
        """A reload that finds a broken certificate keeps serving the old one and logs why."""
        creator = ServerTLS(self.file_config(), "smtp")
        write_file(self.pki.server.certificate, b"-----BEGIN CERTIFICATE-----\nnope\n")
        with capturedLogs() as events:
            self.assertFalse(creator.reload())
        self.assertEqual(
            served_names(loopback(creator, TestClient())), ["localhost", "mail.example.org"]
        )
        [error] = errors(events)
        self.assertEqual(error["path"], self.pki.server.certificate)

    def test_sighup_service_reloads_through_the_reactor(self) -> None:
        """The SIGHUP handler schedules C{reload} with C{callFromThread}; stopping restores it."""
        installed: dict[int, Any] = {signal.SIGHUP: "previous"}
        scheduled: list[Callable[[], object]] = []

        def install(signum: int, handler: Any) -> Any:
            previous = installed.get(signum)
            installed[signum] = handler
            return previous

        class Threads:
            def callFromThread(  # noqa: N802 (the IReactorFromThreads method)
                self, f: Callable[..., object], *a: object, **k: object
            ) -> None:
                scheduled.append(lambda: f(*a, **k))

        calls: list[str] = []
        service = ReloadOnSIGHUP(lambda: calls.append("reload"), Threads(), install)  # type: ignore[arg-type]
        service.startService()
        installed[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(calls, [])
        [run] = scheduled
        run()
        self.assertEqual(calls, ["reload"])
        service.stopService()
        self.assertEqual(installed[signal.SIGHUP], "previous")
