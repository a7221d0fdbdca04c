"""Tests for L{relaygate.config.ops}: the C{[metrics]}, C{[health]}, C{[log]} sections and
C{[server] drain_timeout}."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.config.errors import ConfigError
from relaygate.config.load import parse
from relaygate.config.ops import HealthConfig, LogConfig, MetricsConfig
from relaygate.config.server import ServerConfig as ServerDefaults
from tests.test_config_load import minimal


class OpsConfigTests(SynchronousTestCase):
    """Defaults, values and one-line errors of the operations keys."""

    def assert_error(self, data: dict[str, Any], message: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse(data, "gw.toml")
        self.assertEqual(str(caught.exception), message)

    def test_defaults_are_off(self) -> None:
        """Without the sections: no metrics listener, no probes, no JSON log, 30s drain."""
        config = parse(minimal(), "gw.toml")
        self.assertEqual(config.metrics, MetricsConfig(listen=None, token=""))
        self.assertEqual(config.health, HealthConfig(active=False, passive_down=10.0))
        self.assertEqual(config.log, LogConfig(access=""))
        self.assertEqual(config.server.drain_timeout, 30.0)

    def test_values(self) -> None:
        """Every key is read as written."""
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        config = parse(
            minimal(
                server={"drain_timeout": 5},
                metrics={"listen": "127.0.0.1:9101", "token": "abc"},
                health={"interval": 1, "timeout": 0.5, "fall": 3, "rise": 1, "passive_down": 0},
                log={"access": os.path.join(directory, "access.json")},
            ),
            os.path.join(directory, "gw.toml"),
        )
        self.assertEqual(config.server.drain_timeout, 5.0)
        self.assertEqual(config.metrics, MetricsConfig(HostPort("127.0.0.1", 9101), "abc"))
        self.assertEqual(config.health, HealthConfig(True, 1.0, 0.5, 3, 1, 0.0))
        self.assertEqual(
            config.log.access, os.path.abspath(os.path.join(directory, "access.json"))
        )

    def test_empty_health_section_turns_probes_on(self) -> None:
        """A bare [health] probes with the documented defaults."""
        config = parse(minimal(health={}), "gw.toml")
        self.assertEqual(config.health, HealthConfig(True, 5.0, 2.0, 2, 2, 10.0))

    def test_errors(self) -> None:
        """Each bad value is reported as FILE: key: what is wrong."""
        for data, message in [
            (
                minimal(metrics={"listen": "nowhere"}),
                "gw.toml: metrics.listen: 'nowhere': missing ':PORT'",
            ),
            (minimal(metrics={"port": 1}), "gw.toml: metrics.port: unknown key"),
            (minimal(metrics={"token": "x"}), "gw.toml: metrics.token: needs [metrics] listen"),
            (
                minimal(metrics={"listen": "127.0.0.1:9101", "token": "a b"}),
                "gw.toml: metrics.token: must not contain white space (it goes in an HTTP header)",
            ),
            (minimal(health={"fall": 0}), "gw.toml: health.fall: must be at least 1, got 0"),
            (
                minimal(health={"interval": 1, "timeout": 2}),
                "gw.toml: health.timeout: 2.0 is longer than interval (1.0)",
            ),
            (minimal(health={"rise": "2"}), "gw.toml: health.rise: expected an integer, got '2'"),
            (minimal(log={"acces": "x"}), "gw.toml: log.acces: unknown key"),
            (
                minimal(log={"access": "/nonexistent-dir/access.json"}),
                "gw.toml: log.access: directory '/nonexistent-dir' does not exist",
            ),
            (
                minimal(server={"drain_timeout": -1}),
                "gw.toml: server.drain_timeout: must be at least 0, got -1",
            ),
        ]:
            self.assert_error(data, message)


class ServiceUnitTests(SynchronousTestCase):
    """etc/relaygate.service keeps the promises docs/operations.md makes."""

    def test_unit(self) -> None:
        """SIGHUP reload, SIGTERM stop with time above drain_timeout, unprivileged user."""
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(os.path.dirname(here), "etc", "relaygate.service")) as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        settings: dict[str, list[str]] = {}
        for line in lines:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
        self.assertEqual(settings["ExecReload"][-1], "/bin/kill -HUP $MAINPID")
        self.assertEqual(settings["KillSignal"], ["SIGTERM"])
        self.assertGreater(float(settings["TimeoutStopSec"][0]), ServerDefaults.drain_timeout)
        self.assertEqual(settings["User"], ["relaygate"])
        self.assertEqual(settings["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"])
        self.assertIn("twistd -n --pidfile= relaygate", settings["ExecStart"][0])
