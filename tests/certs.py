"""Certificates made at test time: a test CA, server, client, expired and wrong-name certificates.

Nothing here is committed key material: every key is generated when a test calls L{make_pki} (or
L{issue}), and written as PEM files into a temporary directory the test owns. Keys are P-256 EC
keys, which are quick to generate, so each test can have its own PKI.

Typical use::

    pki = make_pki(self.mktemp())
    config = TLSConfig(certificate=pki.server.certificate, key=pki.server.key)
    creator = backend_tls_creator("localhost", pki.ca.certificate)

Every L{Issued} has C{certificate} (leaf, then its issuer unless self-signed), C{key}, and
C{combined} (key + chain in one file: the C{NAME.pem} layout of a certificate directory).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """One certificate and its key, as objects and as PEM files in the PKI's directory."""

    name: str
    cert: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    certificate: str
    """Path of the PEM certificate file: the leaf, then the issuing CA unless self-signed."""
    key: str
    """Path of the PEM private key file (PKCS#8, unencrypted)."""
    combined: str
    """Path of one PEM file holding the key and the chain (a certificate directory's NAME.pem)."""

    @property
    def pem(self) -> bytes:
        """The leaf certificate alone, PEM-encoded."""
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class PKI:
    """A test CA and the certificates it issued, all written under C{directory}."""

    directory: str
    ca: Issued
    """The test CA; C{ca.certificate} is the CA bundle to trust."""
    server: Issued
    """For C{localhost} and C{mail.example.org}, and the IP addresses 127.0.0.1 and ::1."""
    other: Issued
    """For C{other.example.net}: the second name of SNI tests."""
    client: Issued
    """A client certificate whose subject needs RFC 2253 escaping (a comma, a non-ASCII name)."""
    expired: Issued
    """Like C{server}, but its validity ended yesterday."""
    wrong_name: Issued
    """Valid, from the test CA, but for C{wrong.example.com} only."""
    unknown_ca: Issued
    """The test CA of somebody else (not trusted by anything here)."""
    untrusted: Issued
    """For C{localhost} and 127.0.0.1, issued by C{unknown_ca}."""


def _write(directory: str, filename: str, data: bytes) -> str:
    path = os.path.join(directory, filename)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _name(common_name: str, organization: str = "relaygate tests") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(directory: str, name: str = "ca", common_name: str = "relaygate test CA") -> Issued:
    """A self-signed CA certificate and key, written as C{NAME.crt}, C{NAME.key}, C{NAME.pem}."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return _save(directory, name, cert, key, None)


def issue(
    ca: Issued,
    directory: str,
    name: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    *,
    subject: x509.Name | None = None,
    client: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    serial_number: int | None = None,
) -> Issued:
    """Issue a leaf certificate from C{ca} and write C{NAME.crt}, C{NAME.key} and C{NAME.pem}.

    @param dns_names: C{subjectAltName} DNS entries; the first one is also the subject's CN.
    @param ip_addresses: C{subjectAltName} IP entries (IPv4 or IPv6 text).
    @param client: make a client certificate (extended key usage C{clientAuth}) instead of a
        server certificate (C{serverAuth}).
    @param not_before: start of validity; default yesterday.
    @param not_after: end of validity; default in 30 days. Pass a past time for an expired one.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    if subject is None:
        subject = _name(dns_names[0] if dns_names else name)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial_number or x509.random_serial_number())
        .not_valid_before(not_before or now - _ONE_DAY)
        .not_valid_after(not_after or now + 30 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    return _save(directory, name, cert, key, ca)


def _save(
    directory: str,
    name: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca: Issued | None,
) -> Issued:
    chain = cert.public_bytes(serialization.Encoding.PEM)
    if ca is not None:
        chain += ca.pem
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Issued(
        name=name,
        cert=cert,
        private_key=key,
        certificate=_write(directory, f"{name}.crt", chain),
        key=_write(directory, f"{name}.key", key_pem),
        combined=_write(directory, f"{name}.pem", key_pem + chain),
    )


def make_pki(directory: str) -> PKI:
    """Create C{directory} if needed and fill it with a test CA and the certificates of L{PKI}."""
    os.makedirs(directory, exist_ok=True)
    ca = make_ca(directory)
    now = datetime.datetime.now(datetime.UTC)
    unknown_ca = make_ca(directory, "unknown-ca", "somebody else's CA")
    client_subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, "Jürgen Müller"),
        ]
    )
    return PKI(
        directory=directory,
        ca=ca,
        server=issue(
            ca, directory, "server", ["localhost", "mail.example.org"], ["127.0.0.1", "::1"]
        ),
        other=issue(ca, directory, "other", ["other.example.net"]),
        client=issue(ca, directory, "client", subject=client_subject, client=True),
        expired=issue(
            ca,
            directory,
            "expired",
            ["localhost"],
            ["127.0.0.1"],
            not_before=now - 60 * _ONE_DAY,
            not_after=now - _ONE_DAY,
        ),
        wrong_name=issue(ca, directory, "wrong-name", ["wrong.example.com"]),
        unknown_ca=unknown_ca,
        untrusted=issue(unknown_ca, directory, "untrusted", ["localhost"], ["127.0.0.1"]),
    )
