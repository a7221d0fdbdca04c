"""STARTTLS to a backend as C{backend_tls} says: one decision for SMTP, IMAP and POP3.

Each protocol knows how to ask (C{STARTTLS} with its 220 or tagged OK, POP3's C{STLS}) and how
to switch its connection to TLS; what to do when the backend does not offer it, refuses it, or
fails the handshake is the same everywhere (RFC 3207 section 4.2, RFC 2595 section 3.1):

 - C{opportunistic}: a backend that does not offer STARTTLS, or refuses it, is used in
   plaintext; one whose handshake fails is not (that connection is gone, and a retry in
   plaintext is what an attacker who breaks handshakes would want);
 - C{required}: not offered or refused is L{BackendTLSNotOffered}, before anything that
   identifies the client was sent;
 - C{none} and C{implicit} send nothing (implicit TLS was set up by the endpoint).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from relaygate.addresses import HostPort
from relaygate.backend.errors import BackendTLSNotOffered
from relaygate.backend.policy import TLSCreatorFor

Upgrade = Callable[[IOpenSSLClientConnectionCreator], Awaitable[str | None]]
"""Asks the backend for TLS and, when it agrees, completes the handshake with the creator.

Returns C{None} once TLS is up, or the backend's refusal (for the logs) when it said no; a
failed handshake or certificate check raises L{relaygate.backend.errors.BackendTLSError}.
"""


async def starttls_to_backend(
    mode: str, address: HostPort, offered: bool, upgrade: Upgrade, tls_for: TLSCreatorFor
) -> bool:
    """STARTTLS as C{mode} says; C{True} once TLS is up, C{False} when staying plaintext.

    @param offered: whether the backend advertised STARTTLS (STLS).
    @raise BackendTLSNotOffered: C{required}, and the backend did not offer or refused it.
    """
    if mode not in ("opportunistic", "required"):
        return False
    if not offered:
        if mode == "required":
            raise BackendTLSNotOffered(f"{address} does not offer STARTTLS")
        return False
    refusal = await upgrade(tls_for(address))
    if refusal is not None:
        if mode == "required":
            detail = f": {refusal}" if refusal else ""
            raise BackendTLSNotOffered(f"{address} refused STARTTLS{detail}")
        return False
    return True
