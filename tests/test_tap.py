"""Tests for L{relaygate.tap}: the twistd options and the service tree they build."""

from __future__ import annotations

import os
import sys
from io import StringIO
from typing import cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from relaygate.reactor import IParentReactor
from relaygate.tap import Options, makeService

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")


class OptionsTests(SynchronousTestCase):
    """``twistd relaygate`` options."""

    def test_config_loaded(self) -> None:
        """-c loads and checks the file."""
        options = Options()
        options.parseOptions(["-c", os.path.join(ETC, "demo.toml")])
        self.assertEqual(options.config.server.name, "relaygate.localhost")

    def test_bad_config_is_a_usage_error(self) -> None:
        """A bad file stops option parsing with the one-line message."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nname = 1\n[[listen]]\nprotocol = "smtp"\naddress = "x:1"\n')
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["-c", path])
        self.assertEqual(str(caught.exception), f"{path}: server.name: expected a string, got 1")

    def test_check_prints_ok_and_exits(self) -> None:
        """--check validates, prints 'FILE: ok' and exits 0."""
        out = StringIO()
        self.patch(sys, "stdout", out)
        path = os.path.join(ETC, "demo.toml")
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--check", "-c", path])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"{path}: ok\n")


class MakeServiceTests(SynchronousTestCase):
    """makeService builds one listening service per [[listen]] on the given reactor."""

    def test_listeners_and_demo(self) -> None:
        """The demo config listens on 2525 (gateway) and 2526 (demo backend)."""
        options = Options()
        options.parseOptions(["-c", os.path.join(ETC, "demo.toml")])
        reactor = MemoryReactorClock()
        self.patch(os, "makedirs", lambda *a, **k: None)
        # MemoryReactorClock provides what this config uses (relaygate.reactor explains the cast).
        service = makeService(options, cast(IParentReactor, reactor))
        assert isinstance(service, MultiService)
        listening = [s for s in service if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(listening), 2)
        service.startService()
        self.addCleanup(service.stopService)
        ports = sorted((port, interface) for port, _, _, interface in reactor.tcpServers)
        self.assertEqual(ports, [(2525, "127.0.0.1"), (2526, "127.0.0.1")])
