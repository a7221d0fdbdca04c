"""The SMTP front's answer to a STARTTLS it cannot take (RFC 3207), from the client-TLS gate.

The gate (L{relaygate.client_tls.ClientTLSGate}) is shared by the three fronts; these replies
are SMTP's (Postfix's texts).
"""

from __future__ import annotations

from relaygate.client_tls import ClientTLSGate
from relaygate.smtp.replies import R_NOT_AVAILABLE, R_STARTTLS_SYNTAX, R_TLS_ACTIVE, Reply


def starttls_refusal(gate: ClientTLSGate, rest: bytes) -> Reply | None:
    """The error reply to C{STARTTLS rest}, or C{None} when TLS may start now."""
    if not gate.listener_offers_starttls():
        return R_TLS_ACTIVE if gate.secure else R_NOT_AVAILABLE
    if gate.secure or gate.handshaking:
        return R_TLS_ACTIVE
    if rest:
        return R_STARTTLS_SYNTAX
    return None
