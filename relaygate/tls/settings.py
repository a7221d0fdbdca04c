"""The front door's TLS settings: protocol versions, cipher defaults, client-certificate modes."""

from __future__ import annotations

from typing import Final

from OpenSSL import SSL

from relaygate.tls.errors import CertificateError

TLS_VERSIONS: Final = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}
"""The C{[tls] protocols} names (nginx's C{ssl_protocols} spelling) and OpenSSL's versions."""

DEFAULT_PROTOCOLS: Final = ("TLSv1.2", "TLSv1.3")

DEFAULT_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
"""Forward-secret AEAD suites for TLS 1.2 (Mozilla's "intermediate" list without DHE).

TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults, as nginx does.
"""

DEFAULT_HANDSHAKE_TIMEOUT: Final = 30.0

VERIFY_CLIENT_MODES: Final = ("off", "optional", "required")


def check_cipher_string(ciphers: str) -> None:
    """Check that OpenSSL accepts C{ciphers} as a cipher list (for TLS 1.2 and older).

    @raise CertificateError: with OpenSSL's reason.
    """
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise CertificateError(f"{ciphers!r} selects no cipher OpenSSL knows") from None
