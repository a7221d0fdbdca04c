"""Tests for L{relaygate.tls.client}: verified client contexts to backends and the auth service."""

from __future__ import annotations

from cryptography import x509
from OpenSSL import crypto
from twisted.internet.ssl import CertificateOptions

from relaygate.tls.client import backend_tls_creator, https_policy
from relaygate.tls.facts import (
    client_tls_info,
    rfc2253_name,
    tls_facts,
)
from relaygate.tls.server import ServerTLS
from tests.certs import Issued
from tests.tls_harness import (
    PKITestCase,
    loopback,
)


class BackendTests(PKITestCase):
    """L{backend_tls_creator} verifies the backend by name or IP and can present a certificate."""

    def backend(self, issued: Issued) -> CertificateOptions:
        """A plain TLS server presenting C{issued}."""
        with open(issued.certificate, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        return CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(issued.private_key),
            certificate=crypto.X509.from_cryptography(chain[0]),
        )

    def test_verifies_by_name(self) -> None:
        """A certificate for C{localhost} from the CA is accepted for host C{localhost}."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.server), creator)
        self.assertTrue(link.client.handshake_done)
        facts = tls_facts(link.client_tls)
        assert facts is not None
        self.assertEqual((facts.protocol, facts.verified), ("TLSv1.3", True))

    def test_verifies_by_ip_address(self) -> None:
        """IPv4 and IPv6 hosts are checked against the certificate's IP SANs."""
        for host in ["127.0.0.1", "::1"]:
            creator = backend_tls_creator(host, self.pki.ca.certificate)
            link = loopback(self.backend(self.pki.server), creator)
            self.assertTrue(link.client.handshake_done, host)

    def test_ip_not_in_certificate_refused(self) -> None:
        """An address the certificate does not name is refused."""
        creator = backend_tls_creator("127.0.0.2", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.server), creator)
        self.assertFalse(link.client.handshake_done)

    def test_wrong_name_refused(self) -> None:
        """A valid certificate for another name fails the handshake."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.wrong_name), creator)
        self.assertFalse(link.client.handshake_done)
        assert link.client.lost is not None
        self.assertIn("localhost", str(link.client.lost.value))

    def test_expired_refused(self) -> None:
        """An expired certificate fails the handshake."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.expired), creator)
        self.assertFalse(link.client.handshake_done)
        assert link.client.lost is not None
        self.assertIn("certificate verify failed", str(link.client.lost.value))

    def test_unknown_ca_refused(self) -> None:
        """A certificate from a CA not in the bundle fails the handshake."""
        creator = backend_tls_creator("localhost", self.pki.ca.certificate)
        link = loopback(self.backend(self.pki.untrusted), creator)
        self.assertFalse(link.client.handshake_done)
        self.assertIsNotNone(link.client.lost)

    def test_presents_client_certificate(self) -> None:
        """With C{certificate}/C{key}, the backend sees and verifies our client certificate."""
        server = ServerTLS(
            self.file_config(client_ca=self.pki.ca.certificate, verify_client="required"), "smtp"
        )
        creator = backend_tls_creator(
            "localhost", self.pki.ca.certificate, self.pki.client.certificate, self.pki.client.key
        )
        link = loopback(server, creator)
        info = client_tls_info(link.server_tls)
        assert info is not None
        self.assertEqual(info.verify, "SUCCESS")
        self.assertEqual(info.subject, rfc2253_name(self.pki.client.cert.subject))

    def test_https_policy_verifies_with_bundle(self) -> None:
        """The treq policy accepts the CA's certificate and refuses a wrong name."""
        policy = https_policy(self.pki.ca.certificate)
        good = loopback(self.backend(self.pki.server), policy.creatorForNetloc(b"localhost", 443))
        self.assertTrue(good.client.handshake_done)
        bad = policy.creatorForNetloc(b"localhost", 443)
        self.assertFalse(loopback(self.backend(self.pki.wrong_name), bad).client.handshake_done)
