"""Server names: the SNI name as a safe file-name stem, and the DNS names of a certificate."""

from __future__ import annotations

from cryptography import x509


def dns_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names of a certificate's subjectAltName, for log events."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in sans.value.get_values_for_type(x509.DNSName)]


def normalise_server_name(raw: bytes | None) -> str | None:
    """The SNI name as a safe lower-case file-name stem, or None when it cannot be one.

    Clients send A-labels (RFC 6066 §3); anything but letters, digits, C{-} and C{.} in proper
    labels is refused here, so a name can never walk out of the certificate directory.
    """
    if not raw:
        return None
    try:
        name = raw.decode("ascii").lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    labels = name.split(".")
    if not name or len(name) > 253 or any(not label for label in labels):
        return None
    if not all(c.isascii() and (c.isalnum() or c == "-") for c in name.replace(".", "")):
        return None
    return name
