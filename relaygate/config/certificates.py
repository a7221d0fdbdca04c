"""Checks that a CA bundle or a client certificate named in the config can be loaded.

Shared by the sections that name backend certificates; the files are read with
L{relaygate.tls.files}, as the services will read them.
"""

from __future__ import annotations

from relaygate.config.table import Table
from relaygate.tls.errors import CertificateError, PrivateKeyError
from relaygate.tls.files import load_ca_bundle, load_key_and_chain


def check_ca_bundle(t: Table, key: str, path: str) -> None:
    """A CA bundle key must name a file with at least one PEM certificate (or be "system")."""
    if not path or path == "system":
        return

    try:
        load_ca_bundle(path)
    except CertificateError as e:
        raise t.error(key, str(e)) from None


def check_client_certificate(t: Table, certificate: str, key: str) -> None:
    """C{backend_certificate}/C{backend_key}: a chain and its key that belong together."""
    if key and not certificate:
        raise t.error("backend_key", "needs backend_certificate")
    if not certificate:
        return

    try:
        load_key_and_chain(certificate, key)
    except PrivateKeyError as e:
        raise t.error("backend_key" if key else "backend_certificate", str(e)) from None
    except CertificateError as e:
        raise t.error("backend_certificate", str(e)) from None
