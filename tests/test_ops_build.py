"""Tests for L{relaygate.ops.build}: the operations services made from a configuration."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.config.load import parse
from relaygate.ops.accesslog import AccessLogService
from relaygate.ops.build import access_log_service, health_targets, metrics_service, new_health
from relaygate.ops.probe import ProbeTarget
from relaygate.ops.sessions import SessionRegistry
from tests.certs import make_pki
from tests.test_config_load import minimal


class BuildTests(SynchronousTestCase):
    """What runs depends on the sections present."""

    def test_metrics_service_only_when_listening(self) -> None:
        """Without [metrics] listen there is no HTTP listener; with it, one on that address."""
        reactor = MemoryReactorClock()
        registry = SessionRegistry(reactor)
        self.assertIsNone(metrics_service(parse(minimal(), "gw.toml"), reactor, None, registry))  # type: ignore[arg-type]
        config = parse(minimal(metrics={"listen": "127.0.0.1:9101"}), "gw.toml")
        service = metrics_service(config, reactor, CollectorRegistry(), registry)
        assert service is not None
        service.startService()
        self.assertEqual([(p[0], p[3]) for p in reactor.tcpServers], [(9101, "127.0.0.1")])

    def test_health_probes_route_backends(self) -> None:
        """[health] present: every route backend is probed at start; absent: none is."""
        for data, probed in [(minimal(), []), (minimal(health={}), [("127.0.0.1", 25)])]:
            reactor = MemoryReactorClock()
            health = new_health(parse(data, "gw.toml"), reactor, None)
            health.startService()
            self.assertEqual([(c[0], c[1]) for c in reactor.tcpClients], probed)
            health.stopService()

    def test_access_log_service(self) -> None:
        """[log] access adds the JSON log."""
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        data = minimal(log={"access": os.path.join(directory, "access.json")})
        reactor = MemoryReactorClock()
        self.assertIsInstance(
            access_log_service(parse(data, "gw.toml"), reactor), AccessLogService
        )
        self.assertIsNone(access_log_service(parse(minimal(), "gw.toml"), reactor))


class TargetTests(SynchronousTestCase):
    """Probe targets take the route's protocol and TLS/PROXY settings."""

    def test_route_settings_override_section(self) -> None:
        """A route's backend_proxy_protocol wins over the protocol section's."""
        config = parse(
            minimal(
                listen=[
                    {"protocol": "smtp", "address": "127.0.0.1:2525"},
                    {"protocol": "pop3", "address": "127.0.0.1:2110"},
                ],
                route=[
                    {"protocol": "smtp", "match": "*", "backends": ["127.0.0.1:25"]},
                    {
                        "protocol": "pop3",
                        "match": "*",
                        "backends": ["127.0.0.1:110", "127.0.0.1:111"],
                        "backend_proxy_protocol": "v2",
                    },
                    {"protocol": "*", "match": "x.org", "backends": ["127.0.0.1:26"]},
                ],
                smtp={"backend_proxy_protocol": "v1"},
            ),
            "gw.toml",
        )
        self.assertEqual(
            health_targets(config),
            [
                ProbeTarget("smtp", HostPort("127.0.0.1", 25), "none", "v1"),
                ProbeTarget("pop3", HostPort("127.0.0.1", 110), "none", "v2"),
                ProbeTarget("pop3", HostPort("127.0.0.1", 111), "none", "v2"),
                ProbeTarget("*", HostPort("127.0.0.1", 26), "none", "none"),
            ],
        )

    def test_star_route_with_one_protocol(self) -> None:
        """A "*" route with only SMTP listeners is probed as SMTP."""
        config = parse(minimal(), "gw.toml")
        self.assertEqual(health_targets(config), [ProbeTarget("smtp", HostPort("127.0.0.1", 25))])

    def test_required_tls_gets_a_verifying_creator(self) -> None:
        """backend_tls required builds the section's verifying client TLS for the probe."""
        pki = make_pki(os.path.abspath(self.mktemp()))
        config = parse(
            minimal(smtp={"backend_tls": "required", "backend_ca": pki.ca.certificate}),
            "gw.toml",
        )
        [target] = health_targets(config)
        self.assertEqual(target.tls, "required")
        self.assertIsNotNone(target.tls_creator)
