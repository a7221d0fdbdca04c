"""Reading PEM certificates, private keys, CA bundles and certificate directories.

Also the file signature that tells a reload whether a file changed on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import crypto

from relaygate.tls.errors import CertificateError, PrivateKeyError


@dataclass(frozen=True)
class KeyAndChain:
    """A private key and its certificate chain (leaf first), checked to belong together."""

    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"{path!r}: {e.strerror}") from None


def _certificates_in(path: str, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"{path!r}: not a valid PEM certificate: {e}") from None


def _private_key_in(path: str, data: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PrivateKeyError(f"{path!r}: encrypted private keys are not supported") from None
    except (ValueError, crypto.Error) as e:
        reason = "no PEM private key" if b"PRIVATE KEY-----" not in data else str(e)
        raise PrivateKeyError(f"{path!r}: {reason}") from None
    except Exception as e:  # cryptography raises UnsupportedAlgorithm for odd key types
        raise PrivateKeyError(f"{path!r}: {e}") from None


def load_key_and_chain(certificate: str, key: str = "") -> KeyAndChain:
    """Read a certificate chain and its private key, and check that they match.

    @param certificate: a PEM file: the server's certificate, then its intermediates. When
        C{key} is empty the same file must also hold the private key (a C{NAME.pem}).
    @raise CertificateError: naming the file and what is wrong with it; L{PrivateKeyError}
        when the key is the problem.
    """
    data = _read(certificate)
    chain = _certificates_in(certificate, data)
    if not chain:
        raise CertificateError(f"{certificate!r}: no PEM certificate")
    key_data = data
    if key:
        try:
            key_data = _read(key)
        except CertificateError as e:
            raise PrivateKeyError(str(e)) from None
    private_key = _private_key_in(key or certificate, key_data)
    leaf_key = chain[0].public_key()
    if private_key.public_key() != leaf_key:
        raise PrivateKeyError(
            f"{key or certificate!r}: the private key does not match the certificate"
            f" in {certificate!r}"
        )
    return KeyAndChain(private_key, tuple(chain))


def load_ca_bundle(path: str) -> tuple[x509.Certificate, ...]:
    """Read a PEM bundle of CA certificates (at least one).

    @raise CertificateError: when the file cannot be read or holds no certificate.
    """
    certificates = _certificates_in(path, _read(path))
    if not certificates:
        raise CertificateError(f"{path!r}: no PEM certificate")
    return tuple(certificates)


def directory_files(directory: str) -> list[str]:
    """The C{*.pem} file names in a certificate directory, sorted."""
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise CertificateError(f"{directory!r}: {e.strerror}") from None
    return sorted(n for n in names if n.endswith(".pem") and not n.startswith("."))


def default_file(directory: str) -> str:
    """The file served to clients whose SNI name has no file: C{default.pem}, else the first.

    @raise CertificateError: when the directory holds no C{*.pem} file.
    """
    names = directory_files(directory)
    if not names:
        raise CertificateError(f"{directory!r}: no *.pem file in the certificate directory")
    return os.path.join(directory, "default.pem" if "default.pem" in names else names[0])


def check_directory(directory: str) -> None:
    """Load every C{NAME.pem} of a certificate directory, as L{ServerTLS} will.

    @raise CertificateError: for the first file that cannot serve, or an empty directory.
    """
    for name in directory_files(directory):
        load_key_and_chain(os.path.join(directory, name))
    default_file(directory)


def file_signature(*paths: str) -> tuple[tuple[int, int, int, int], ...] | None:
    """What changes when a file is renewed (mtime, size, inode, device), or None if missing."""
    try:
        stats = [os.stat(p) for p in paths]
    except FileNotFoundError:
        return None
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino, s.st_dev) for s in stats)
