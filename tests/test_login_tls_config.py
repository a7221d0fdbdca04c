"""The TLS keys of C{[imap]} and C{[pop3]}: what the config accepts and what the service builds."""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaygate import service as service_module
from relaygate.config.errors import ConfigError
from relaygate.config.model import Config
from relaygate.imap import IMAPFrontFactory
from relaygate.pop3 import POP3FrontFactory
from relaygate.reactor import IGatewayReactor
from relaygate.service import build_service
from tests.certs import make_pki
from tests.fronts import (
    make_config,
    tls_section,
)


class ConfigTests(SynchronousTestCase):
    """The C{[imap]}/C{[pop3]} TLS keys and the STARTTLS listeners in the config."""

    def setUp(self) -> None:
        self.pki = make_pki(os.path.abspath(self.mktemp()))

    def parse(self, **sections: Any) -> Config:
        return make_config(tls=tls_section(self.pki), **sections)

    def test_starttls_listeners_accepted(self) -> None:
        """IMAP and POP3 listeners take C{starttls} and C{starttls-required}."""
        config = self.parse(
            listen=[
                {"protocol": "imap", "address": "127.0.0.1:1143", "tls": "starttls"},
                {"protocol": "pop3", "address": "127.0.0.1:1110", "tls": "starttls-required"},
            ]
        )
        self.assertEqual([item.tls for item in config.listen], ["starttls", "starttls-required"])

    def test_service_builds_tls_fronts(self) -> None:
        """The service gives IMAP and POP3 fronts their listener's TLS mode and certificates."""
        config = self.parse(
            listen=[
                {"protocol": "imap", "address": "127.0.0.1:1143", "tls": "starttls"},
                {"protocol": "pop3", "address": "127.0.0.1:1995", "tls": "implicit"},
            ]
        )
        gateway = build_service(config, cast(IGatewayReactor, MemoryReactorClock()))
        imap, pop3 = (
            cast(Any, item.switch.wrapped_factory).wrapped_factory
            for item in gateway.listeners.values()
        )
        assert isinstance(imap, IMAPFrontFactory) and isinstance(pop3, POP3FrontFactory)
        self.assertEqual(imap.settings.tls_mode, "starttls")
        self.assertEqual(pop3.settings.tls_mode, "implicit")
        imap_tls = imap.settings.server_tls
        pop3_tls = pop3.settings.server_tls
        assert imap_tls is not None and pop3_tls is not None
        self.assertEqual((imap_tls.protocol, pop3_tls.protocol), ("imap", "pop3"))
        # SIGHUP re-reads the file and reloads the creators of the listeners it keeps.
        reloaded: list[str] = []
        for server_tls in (imap_tls, pop3_tls):

            def reload(protocol: str = server_tls.protocol) -> bool:
                reloaded.append(protocol)
                return True

            self.patch(server_tls, "reload", reload)
        self.patch(service_module, "load", lambda path: config)
        self.assertTrue(gateway.reload())
        self.assertEqual(reloaded, ["imap", "pop3"])

    def test_backend_tls_keys(self) -> None:
        """backend_tls, backend_ca, backend_certificate and backend_key are read."""
        config = self.parse(
            imap={
                "backend_tls": "required",
                "backend_ca": self.pki.ca.certificate,
                "backend_certificate": self.pki.client.certificate,
                "backend_key": self.pki.client.key,
            },
            pop3={"backend_tls": "implicit", "backend_ca": "system"},
        )
        self.assertEqual(
            (config.imap.backend_tls, config.imap.backend_ca, config.imap.backend_key),
            ("required", self.pki.ca.certificate, self.pki.client.key),
        )
        self.assertEqual((config.pop3.backend_tls, config.pop3.backend_ca), ("implicit", "system"))

    def test_route_backend_tls_for_imap_and_pop3(self) -> None:
        """A C{[[route]]} for IMAP, POP3 or any protocol may set its own C{backend_tls}."""
        config = self.parse(
            route=[
                {
                    "protocol": "imap",
                    "match": "a.org",
                    "backends": ["h:993"],
                    "backend_tls": "implicit",
                },
                {"protocol": "*", "match": "*", "backends": ["h:110"], "backend_tls": "required"},
            ]
        )
        self.assertEqual([r.backend_tls for r in config.routes], ["implicit", "required"])

    def test_backend_key_without_certificate(self) -> None:
        """A backend_key needs a backend_certificate."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(pop3={"backend_key": self.pki.client.key})
        self.assertIn("pop3.backend_key: needs backend_certificate", str(caught.exception))

    def test_backend_ca_must_hold_certificates(self) -> None:
        """A backend_ca that is not a PEM bundle is refused."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(imap={"backend_ca": self.pki.client.key})
        self.assertIn("imap.backend_ca:", str(caught.exception))

    def test_external_needs_client_certificates(self) -> None:
        """EXTERNAL needs [tls] verify_client (and an auth service)."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(imap={"auth": ["plain", "external"]}, auth={"http": "http://x/auth"})
        self.assertIn("imap.auth: 'external' needs [tls] verify_client", str(caught.exception))
