"""Tests for L{relaygate.tls.server}: certificates, SNI, the ALPN guard and client certificates."""

from __future__ import annotations

import datetime
from typing import Any

from OpenSSL import SSL
from twisted.internet.testing import StringTransport

from relaygate.config.tls import TLSConfig
from relaygate.routing.router import ClientTLS
from relaygate.tls.facts import (
    CERTIFICATE_REPLIES,
    certificate_problem,
    client_tls_info,
    tls_facts,
)
from relaygate.tls.names import normalise_server_name
from relaygate.tls.server import ALPNMismatch, ServerTLS
from tests.certs import Issued, issue
from tests.tls_harness import (
    DAY,
    PKITestCase,
    TestClient,
    loopback,
    openssl,
    served_names,
)


class ServerCertificateTests(PKITestCase):
    """The server presents the right certificate: one file, or chosen by SNI from a directory."""

    def test_single_file_handshake_is_tls13(self) -> None:
        """A default client gets TLS 1.3 and the configured certificate."""
        link = loopback(ServerTLS(self.file_config(), "smtp"), TestClient())
        self.assertTrue(link.server.handshake_done)
        self.assertEqual(served_names(link), ["localhost", "mail.example.org"])
        info = client_tls_info(link.server_tls)
        self.assertEqual(
            info, ClientTLS(protocol="TLSv1.3", cipher=info.cipher if info else "", verify="")
        )
        assert info is not None
        self.assertIn("_", info.cipher)

    def test_key_inside_certificate_file(self) -> None:
        """Without C{key}, the certificate file itself may hold the key."""
        config = TLSConfig(certificate=self.pki.server.combined)
        link = loopback(ServerTLS(config, "smtp"), TestClient())
        self.assertTrue(link.server.handshake_done)

    def test_sni_picks_certificate_for_each_name(self) -> None:
        """Two names, two files: each SNI name gets its own certificate."""
        directory = self.certificate_directory(
            {"mail.example.org.pem": self.pki.server, "other.example.net.pem": self.pki.other}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        link = loopback(creator, TestClient(server_name="other.example.net"))
        self.assertEqual(served_names(link), ["other.example.net"])
        link = loopback(creator, TestClient(server_name="MAIL.example.org."))
        self.assertEqual(served_names(link), ["localhost", "mail.example.org"])

    def test_sni_unknown_name_gets_default_pem(self) -> None:
        """A name without a file, and a client without SNI, get C{default.pem}."""
        directory = self.certificate_directory(
            {"a.example.org.pem": self.pki.wrong_name, "default.pem": self.pki.other}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        link = loopback(creator, TestClient(server_name="nobody.example.org"))
        self.assertEqual(served_names(link), ["other.example.net"])
        link = loopback(creator, TestClient())
        self.assertEqual(served_names(link), ["other.example.net"])

    def test_sni_without_default_pem_uses_first_file(self) -> None:
        """Without C{default.pem}, the first file in name order is the default."""
        directory = self.certificate_directory(
            {"b.example.org.pem": self.pki.other, "a.example.org.pem": self.pki.wrong_name}
        )
        link = loopback(ServerTLS(TLSConfig(certificate=directory), "smtp"), TestClient())
        self.assertEqual(served_names(link), ["wrong.example.com"])

    def test_sni_wildcard_file(self) -> None:
        """C{*.example.org.pem} serves any one-label name under example.org."""
        wildcard = issue(self.pki.ca, self.pki.directory, "wildcard", ["*.example.org"])
        directory = self.certificate_directory(
            {"*.example.org.pem": wildcard, "default.pem": self.pki.other}
        )
        creator = ServerTLS(TLSConfig(certificate=directory), "smtp")
        link = loopback(creator, TestClient(server_name="smtp.example.org"))
        self.assertEqual(served_names(link), ["*.example.org"])

    def test_server_name_normalisation(self) -> None:
        """SNI names become lower-case file stems; a name that could leave the directory: None."""
        self.assertEqual(normalise_server_name(b"Mail.Example.ORG."), "mail.example.org")
        for bad in [None, b"", b"../etc/passwd", b"a..b", b".hidden", b"a/b", b"caf\xc3\xa9"]:
            self.assertIsNone(normalise_server_name(bad), bad)


class ProtocolGuardTests(PKITestCase):
    """TLS versions and nginx's ALPN (cross-protocol) guard."""

    def test_tls11_refused_by_default(self) -> None:
        """A TLS 1.1-only client cannot handshake with the default protocols."""
        client = TestClient(version=SSL.TLS1_1_VERSION, ciphers=b"DEFAULT@SECLEVEL=0")
        link = loopback(ServerTLS(self.file_config(), "smtp"), client)
        self.assertFalse(link.server.handshake_done)
        self.assertIsNotNone(link.server.lost)
        assert link.server.lost is not None
        self.assertIsInstance(link.server.lost.value, SSL.Error)

    def test_tls11_accepted_when_configured(self) -> None:
        """The same client succeeds when C{protocols} includes TLSv1.1 (the refusal is ours)."""
        config = self.file_config(
            protocols=("TLSv1.1", "TLSv1.2", "TLSv1.3"), ciphers="DEFAULT@SECLEVEL=0"
        )
        client = TestClient(version=SSL.TLS1_1_VERSION, ciphers=b"DEFAULT@SECLEVEL=0")
        link = loopback(ServerTLS(config, "smtp"), client)
        self.assertTrue(link.server.handshake_done)
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.protocol, "TLSv1.1")

    def test_tls13_refused_when_only_tls12(self) -> None:
        """C{protocols = ["TLSv1.2"]} caps the version."""
        link = loopback(ServerTLS(self.file_config(protocols=("TLSv1.2",)), "smtp"), TestClient())
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.protocol, "TLSv1.2")
        self.assertEqual(info.cipher, "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_alpn_without_listener_protocol_refused(self) -> None:
        """A client offering ALPN without C{smtp} is refused with no_application_protocol."""
        link = loopback(ServerTLS(self.file_config(), "smtp"), TestClient(alpn=[b"imap", b"h2"]))
        self.assertFalse(link.server.handshake_done)
        self.assertFalse(link.client.handshake_done)
        assert link.server.lost is not None and link.client.lost is not None
        self.assertIsInstance(link.server.lost.value, ALPNMismatch)
        self.assertIn("no application protocol", str(link.client.lost.value))

    def test_alpn_with_listener_protocol_selected(self) -> None:
        """A client offering the listener's protocol gets it selected."""
        link = loopback(ServerTLS(self.file_config(), "imap"), TestClient(alpn=[b"h2", b"imap"]))
        self.assertTrue(link.server.handshake_done)
        self.assertEqual(link.client_tls.negotiatedProtocol, b"imap")

    def test_no_alpn_accepted(self) -> None:
        """A client that offers no ALPN at all is fine."""
        link = loopback(ServerTLS(self.file_config(), "pop3"), TestClient())
        self.assertTrue(link.server.handshake_done)
        self.assertIsNone(link.client_tls.negotiatedProtocol)


class ClientCertificateTests(PKITestCase):
    """C{verify_client}: the handshake completes and the result is reported as nginx does."""

    def creator(self, verify_client: str) -> ServerTLS:
        """A server asking for client certificates issued by the test CA."""
        config = self.file_config(client_ca=self.pki.ca.certificate, verify_client=verify_client)
        return ServerTLS(config, "smtp")

    def test_off_reports_no_verify_fields(self) -> None:
        """With C{off}, no certificate is asked for and C{verify} is empty (nginx: no header)."""
        link = loopback(
            ServerTLS(self.file_config(), "smtp"), TestClient(certificate=self.pki.client)
        )
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual((info.verify, info.subject, info.certificate_pem), ("", "", ""))
        self.assertIsNone(certificate_problem(link.server_tls))

    def test_optional_without_certificate(self) -> None:
        """C{optional} and no certificate: C{NONE}, no problem."""
        link = loopback(self.creator("optional"), TestClient())
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "NONE")
        self.assertEqual(info.fingerprint, "")
        self.assertIsNone(certificate_problem(link.server_tls))

    def test_required_without_certificate_completes_with_no_cert(self) -> None:
        """C{required} and no certificate: the handshake completes; the front must send no_cert."""
        link = loopback(self.creator("required"), TestClient())
        self.assertTrue(link.server.handshake_done)
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "NONE")
        self.assertEqual(certificate_problem(link.server_tls), "no_cert")
        self.assertEqual(
            CERTIFICATE_REPLIES["smtp"]["no_cert"], b"421 4.7.1 No required SSL certificate\r\n"
        )

    def test_required_with_good_certificate(self) -> None:
        """A certificate from the CA: C{SUCCESS} and every field as C{openssl x509} prints it."""
        link = loopback(self.creator("required"), TestClient(certificate=self.pki.client))
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertIsNone(certificate_problem(link.server_tls))
        self.assertEqual(info.verify, "SUCCESS")
        path = self.pki.client.certificate
        subject = openssl("x509", "-in", path, "-noout", "-subject", "-nameopt", "RFC2253")
        issuer = openssl("x509", "-in", path, "-noout", "-issuer", "-nameopt", "RFC2253")
        serial = openssl("x509", "-in", path, "-noout", "-serial")
        fingerprint = openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha1")
        pem = openssl("x509", "-in", path)
        self.assertEqual(info.subject, subject.strip().removeprefix("subject="))
        self.assertEqual(info.subject, "CN=J\\C3\\BCrgen M\\C3\\BCller,O=Acme\\, Inc.,C=DE")
        self.assertEqual(info.issuer, issuer.strip().removeprefix("issuer="))
        self.assertEqual(info.serial, serial.strip().removeprefix("serial="))
        self.assertEqual(
            info.fingerprint, fingerprint.strip().partition("=")[2].replace(":", "").lower()
        )
        self.assertEqual(info.certificate_pem, pem)

    def client_certificate(self, name: str, ca: Issued | None = None, **kwargs: Any) -> Issued:
        """A new client certificate (default from the test CA)."""
        ca = ca or self.pki.ca
        return issue(ca, self.pki.directory, name, ["client.example"], client=True, **kwargs)

    def test_optional_with_unknown_ca_is_cert_error(self) -> None:
        """A certificate from another CA: C{FAILED:<OpenSSL's reason>} and cert_error."""
        stranger = self.client_certificate("stranger", self.pki.unknown_ca)
        link = loopback(self.creator("optional"), TestClient(certificate=stranger))
        self.assertTrue(link.server.handshake_done)
        info = client_tls_info(link.server_tls)
        assert info is not None
        # The client sends its CA along, so OpenSSL meets an untrusted self-signed root.
        self.assertEqual(info.verify, "FAILED:self-signed certificate in certificate chain")
        self.assertEqual(info.issuer, "CN=somebody else's CA,O=relaygate tests,C=DE")
        self.assertEqual(certificate_problem(link.server_tls), "cert_error")

    def test_required_with_expired_certificate_is_cert_error(self) -> None:
        """An expired client certificate: C{FAILED:certificate has expired}."""
        now = datetime.datetime.now(datetime.UTC)
        expired = self.client_certificate(
            "expired-client", not_before=now - 9 * DAY, not_after=now - DAY
        )
        link = loopback(self.creator("required"), TestClient(certificate=expired))
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "FAILED:certificate has expired")
        self.assertEqual(certificate_problem(link.server_tls), "cert_error")

    def test_plain_transport_has_no_tls_info(self) -> None:
        """A transport without TLS gives C{None}."""
        self.assertIsNone(client_tls_info(StringTransport()))
        self.assertIsNone(certificate_problem(StringTransport()))
        self.assertIsNone(tls_facts(StringTransport()))
