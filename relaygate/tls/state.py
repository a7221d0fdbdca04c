"""What relaygate records about each pyOpenSSL connection while it handshakes.

The server contexts (L{relaygate.tls.server}) and backend creators (L{relaygate.tls.client})
write here; the certificate facts (L{relaygate.tls.facts}) read it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Final

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import ISSLTransport

X509_V_OK: Final = 0


@dataclass
class ServerConnectionState:
    """What relaygate learned about one server-side TLS connection while it handshook."""

    verify_client: str
    verify_error: int = X509_V_OK


server_states: weakref.WeakKeyDictionary[SSL.Connection, ServerConnectionState] = (
    weakref.WeakKeyDictionary()
)
verified_backends: weakref.WeakSet[SSL.Connection] = weakref.WeakSet()


def record_verification(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """Verify callback: note the error instead of failing the handshake (C{ssl_verify_client}).

    Keeping the I{last} error matches C{SSL_get_verify_result}, which nginx reports: OpenSSL
    overwrites the store's error for each problem its callback lets through. (pyOpenSSL resets
    that error once the callback accepts, so C{SSL_get_verify_result} itself would say OK.)
    """
    state = server_states.get(connection)
    if not ok and state is not None:
        state.verify_error = error
    return True


def tls_connection(transport: object) -> SSL.Connection | None:
    """The pyOpenSSL connection behind an L{ISSLTransport} (implicit TLS or after STARTTLS)."""
    if not ISSLTransport.providedBy(transport):
        return None
    handle = transport.getHandle()  # type: ignore[attr-defined]
    return handle if isinstance(handle, SSL.Connection) else None
