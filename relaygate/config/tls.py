"""C{[tls]}: the front door's certificates, protocol versions and client-certificate policy."""

from __future__ import annotations

import os
from dataclasses import dataclass

from relaygate.config.table import Table
from relaygate.tls.errors import CertificateError, PrivateKeyError
from relaygate.tls.files import check_directory, load_ca_bundle, load_key_and_chain
from relaygate.tls.settings import TLS_VERSIONS, VERIFY_CLIENT_MODES, check_cipher_string


@dataclass(frozen=True)
class TLSConfig:
    """C{[tls]}: the front door's certificates, protocol versions and client-certificate policy.

    C{certificate} is a PEM chain file (C{key} names its key, or the file holds it too) or a
    directory of C{NAME.pem} files chosen by SNI; see C{relaygate.tls.server.ServerTLS}.
    """

    certificate: str = ""
    key: str = ""
    client_ca: str = ""
    verify_client: str = "off"
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ciphers: str = (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    )
    handshake_timeout: float = 30.0


def read_tls(t: Table, base: str) -> TLSConfig:
    """Read C{[tls]} and load its files now, so a broken certificate fails the config check."""
    defaults = TLSConfig()
    tls = TLSConfig(
        certificate=t.path("certificate", base),
        key=t.path("key", base),
        client_ca=t.path("client_ca", base),
        verify_client=t.choice("verify_client", VERIFY_CLIENT_MODES, "off"),
        protocols=t.choices("protocols", tuple(TLS_VERSIONS), defaults.protocols),
        ciphers=t.string("ciphers", defaults.ciphers),
        handshake_timeout=t.number("handshake_timeout", defaults.handshake_timeout, 0.001),
    )
    t.finish()
    if tls.key and not tls.certificate:
        raise t.error("key", "needs [tls] certificate")
    if tls.key and os.path.isdir(tls.certificate):
        raise t.error("key", "must be left out when certificate is a directory of NAME.pem files")
    if tls.verify_client != "off" and not tls.client_ca:
        raise t.error("verify_client", f"{tls.verify_client!r} needs [tls] client_ca")
    if tls.client_ca == "system":
        raise t.error(
            "client_ca", "must be a PEM bundle of the CAs that issue client certificates"
        )
    if not tls.protocols:
        raise t.error("protocols", "needs at least one TLS version")
    known = list(TLS_VERSIONS)
    wanted = sorted(known.index(p) for p in set(tls.protocols))
    if wanted != list(range(wanted[0], wanted[-1] + 1)):
        raise t.error("protocols", "must be a range without gaps, e.g. TLSv1.2 and TLSv1.3")
    try:
        check_cipher_string(tls.ciphers)
    except CertificateError as e:
        raise t.error("ciphers", str(e)) from None
    try:
        if os.path.isdir(tls.certificate):
            check_directory(tls.certificate)
        elif tls.certificate:
            load_key_and_chain(tls.certificate, tls.key)
    except PrivateKeyError as e:
        raise t.error("key" if tls.key else "certificate", str(e)) from None
    except CertificateError as e:
        raise t.error("certificate", str(e)) from None
    try:
        if tls.client_ca:
            load_ca_bundle(tls.client_ca)
    except CertificateError as e:
        raise t.error("client_ca", str(e)) from None
    return tls
