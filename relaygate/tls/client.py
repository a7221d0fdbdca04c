"""Verified client contexts: to backends (L{backend_tls_creator}) and to the auth service
(L{https_policy}), with the trust roots they check against."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from relaygate.tls.files import file_signature, load_ca_bundle, load_key_and_chain
from relaygate.tls.state import verified_backends

if TYPE_CHECKING:
    # Twisted defines the trust-root interface only in its private module; it is used here
    # for annotations alone.
    from twisted.internet._sslverify import IOpenSSLTrustRoot


@lru_cache(maxsize=32)
def _bundle_trust_root(path: str, signature: object) -> IOpenSSLTrustRoot:
    certificates = [Certificate(crypto.X509.from_cryptography(c)) for c in load_ca_bundle(path)]
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)
    return root


def trust_root(ca: str) -> IOpenSSLTrustRoot:
    """The CAs to trust: C{""} or C{"system"} for the OS store, else a PEM bundle's path.

    A bundle is read once per change on disk.
    @raise CertificateError: when the bundle cannot be read.
    """
    if ca in ("", "system"):
        system: IOpenSSLTrustRoot = platformTrust()
        return system
    return _bundle_trust_root(ca, file_signature(ca))


@lru_cache(maxsize=32)
def _client_certificate(certificate: str, key: str, signature: object) -> PrivateCertificate:
    material = load_key_and_chain(certificate, key)
    pem = material.chain[0].public_bytes(serialization.Encoding.PEM)
    key_pem = material.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    client: PrivateCertificate = PrivateCertificate.fromCertificateAndKeyPair(
        Certificate.loadPEM(pem), KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    )
    return client


@implementer(IOpenSSLClientConnectionCreator)
class _VerifiedBackend:
    """Wraps Twisted's client creator to remember which connections it verified (L{tls_facts})."""

    def __init__(self, inner: IOpenSSLClientConnectionCreator) -> None:
        self._inner = inner

    def clientConnectionForTLS(self, tls_protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tls_protocol)
        verified_backends.add(connection)
        return connection


def backend_tls_creator(
    host: str, ca: str, certificate: str = "", key: str = ""
) -> IOpenSSLClientConnectionCreator:
    """A verifying client creator for a backend at C{host} (for C{startTLS} or a TLS endpoint).

    The handshake fails unless the backend's chain leads to C{ca} (L{trust_root}) and
    service_identity finds C{host} in it: a DNS name, or an IP address (IPv4 or IPv6, without
    brackets) as an C{iPAddress} SAN. Twisted's L{optionsForClientTLS} handles both (it uses
    C{IPAddress_ID} for addresses and then sends no SNI, per RFC 6066).

    @param certificate: a PEM chain to present as client certificate (with C{key}, or holding
        the key itself); empty for none.
    @raise CertificateError: when a file cannot be loaded.
    """
    client: PrivateCertificate | None = None
    if certificate:
        signature = file_signature(certificate, key) if key else file_signature(certificate)
        client = _client_certificate(certificate, key, signature)
    inner = optionsForClientTLS(host, trustRoot=trust_root(ca), clientCertificate=client)
    return _VerifiedBackend(inner)


def https_policy(ca: str = "") -> IPolicyForHTTPS:
    """The HTTPS policy for treq's C{Agent} (the auth service): verify against C{ca}.

    Twisted's L{BrowserLikePolicyForHTTPS} already verifies host names (and IP addresses) with
    service_identity; it only needs the trust root. C{ca} as in L{trust_root}.
    """
    policy: IPolicyForHTTPS = BrowserLikePolicyForHTTPS(trustRoot=trust_root(ca))
    return policy
