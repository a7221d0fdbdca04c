"""Tests for L{relaygate.tls.facts}: certificate names and numbers in nginx's formats."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from relaygate.tls.facts import (
    rfc2253_name,
    serial_hex,
)
from tests.certs import issue
from tests.tls_harness import (
    PKITestCase,
    openssl,
)


class NameFormatTests(PKITestCase):
    """Subject, issuer and serial formats match OpenSSL's (and so nginx's) exactly."""

    def test_rfc2253_special_characters_match_openssl(self) -> None:
        """Leading #, trailing space, multi-valued RDNs, quotes and controls as openssl prints."""
        subject = x509.Name(
            [
                x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, '#1 "Mail" <ok>; a=b '),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, " x+y\\z\x01"),
                    ]
                ),
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.org")]
                ),
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "custom")]
                ),
            ]
        )
        issued = issue(self.pki.ca, self.pki.directory, "odd", subject=subject)
        expected = openssl(
            "x509", "-in", issued.certificate, "-noout", "-subject", "-nameopt", "RFC2253"
        )
        self.assertEqual(rfc2253_name(issued.cert.subject), expected.strip()[len("subject=") :])

    def test_serial_keeps_leading_zero_byte(self) -> None:
        """A serial whose hex has an odd digit count gets a leading zero, as openssl prints."""
        issued = issue(
            self.pki.ca, self.pki.directory, "short", ["a.example"], serial_number=0xABC
        )
        self.assertEqual(serial_hex(issued.cert), "0ABC")
        printed = openssl("x509", "-in", issued.certificate, "-noout", "-serial")
        self.assertEqual(printed.strip(), "serial=0ABC")
