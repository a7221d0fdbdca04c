"""Tests for L{relaygate.config.tls}: the C{[tls]} section, its checks and the listeners' TLS."""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from relaygate.config.errors import ConfigError
from relaygate.listeners import (
    new_server_tls,
    reload_certificates,
    tls_reload_service,
)
from relaygate.tls.reload import ReloadOnSIGHUP
from relaygate.tls.server import ServerTLS
from tests.tls_harness import (
    PKITestCase,
    parse_config,
    reactor,
)


class ConfigTests(PKITestCase):
    """C{[tls]} is checked when the config is read: files load, values are known."""

    def assert_config_error(self, tls: dict[str, Any], expected: str) -> None:
        """Parsing C{tls} fails with exactly C{FILE: expected}."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(self.pki.directory, tls)
        path = os.path.join(self.pki.directory, "relaygate.toml")
        self.assertEqual(str(caught.exception), f"{path}: {expected}")

    def test_defaults(self) -> None:
        """Only C{certificate}/C{key} given: TLS 1.2-1.3, AEAD ciphers, 30 s handshakes."""
        config = parse_config(
            self.pki.directory, {"certificate": "server.crt", "key": "server.key"}
        )
        self.assertEqual(config.tls.protocols, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(config.tls.handshake_timeout, 30.0)
        self.assertIn("GCM", config.tls.ciphers)
        self.assertEqual(config.listen[0].tls, "implicit")

    def test_key_not_matching_certificate(self) -> None:
        """A key that is not the certificate's is a config error on C{tls.key}."""
        key = os.path.join(self.pki.directory, "other.key")
        crt = os.path.join(self.pki.directory, "server.crt")
        self.assert_config_error(
            {"certificate": "server.crt", "key": "other.key"},
            f"tls.key: {key!r}: the private key does not match the certificate in {crt!r}",
        )

    def test_certificate_not_pem(self) -> None:
        """A certificate file without a PEM certificate is refused."""
        path = os.path.join(self.pki.directory, "server.key")
        self.assert_config_error(
            {"certificate": "server.key", "key": "server.key"},
            f"tls.certificate: {path!r}: no PEM certificate",
        )

    def test_unknown_protocol(self) -> None:
        """An unknown protocol name is refused."""
        self.assert_config_error(
            {"certificate": "server.pem", "protocols": ["SSLv3"]},
            "tls.protocols: 'SSLv3' is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3",
        )

    def test_protocols_with_gap(self) -> None:
        """Protocols must be a contiguous range."""
        self.assert_config_error(
            {"certificate": "server.pem", "protocols": ["TLSv1.1", "TLSv1.3"]},
            "tls.protocols: must be a range without gaps, e.g. TLSv1.2 and TLSv1.3",
        )

    def test_bad_ciphers(self) -> None:
        """A cipher string OpenSSL does not understand is refused."""
        self.assert_config_error(
            {"certificate": "server.pem", "ciphers": "NOPE-CIPHER"},
            "tls.ciphers: 'NOPE-CIPHER' selects no cipher OpenSSL knows",
        )

    def test_verify_client_needs_client_ca(self) -> None:
        """Client certificates need a CA bundle."""
        self.assert_config_error(
            {"certificate": "server.pem", "verify_client": "required"},
            "tls.verify_client: 'required' needs [tls] client_ca",
        )

    def test_client_ca_not_pem(self) -> None:
        """A client CA file without certificates is refused."""
        path = os.path.join(self.pki.directory, "ca.key")
        self.assert_config_error(
            {"certificate": "server.pem", "client_ca": "ca.key", "verify_client": "optional"},
            f"tls.client_ca: {path!r}: no PEM certificate",
        )

    def test_directory_with_key(self) -> None:
        """A certificate directory takes no C{key}."""
        self.certificate_directory({"default.pem": self.pki.server})
        self.assert_config_error(
            {"certificate": "sni", "key": "server.key"},
            "tls.key: must be left out when certificate is a directory of NAME.pem files",
        )

    def test_directory_with_broken_file(self) -> None:
        """Every file of a certificate directory must load."""
        directory = self.certificate_directory({"default.pem": self.pki.server})
        shutil.copyfile(self.pki.server.certificate, os.path.join(directory, "nokey.pem"))
        path = os.path.join(directory, "nokey.pem")
        self.assert_config_error(
            {"certificate": "sni"}, f"tls.certificate: {path!r}: no PEM private key"
        )

    def test_empty_directory(self) -> None:
        """A certificate directory needs at least one C{*.pem}."""
        directory = os.path.join(self.pki.directory, "empty")
        os.mkdir(directory)
        self.assert_config_error(
            {"certificate": "empty"},
            f"tls.certificate: {directory!r}: no *.pem file in the certificate directory",
        )

    def test_bad_handshake_timeout(self) -> None:
        """The handshake timeout must be positive."""
        self.assert_config_error(
            {"certificate": "server.pem", "handshake_timeout": 0},
            "tls.handshake_timeout: must be at least 0.001, got 0",
        )

    def test_smtp_starttls_listeners(self) -> None:
        """SMTP listeners take C{starttls} and C{starttls-required}."""
        for mode in ("starttls", "starttls-required"):
            config = parse_config(self.pki.directory, {"certificate": "server.pem"}, mode)
            self.assertEqual(config.listen[0].tls, mode)

    def test_server_tls_for_tls_listeners_only(self) -> None:
        """L{new_server_tls} builds a creator for a TLS listener and None for a plain one."""
        config = parse_config(self.pki.directory, {"certificate": "server.pem"})
        first = new_server_tls(config.listen[0], config)
        assert first is not None
        self.assertIsInstance(first, ServerTLS)
        plain = dataclasses.replace(config.listen[0], tls="none")
        self.assertIsNone(new_server_tls(plain, config))
        self.assertTrue(reload_certificates([first]))
        self.assertIsInstance(tls_reload_service([first], reactor), ReloadOnSIGHUP)
        self.assertIsNone(tls_reload_service([], reactor))
