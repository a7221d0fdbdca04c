"""The C{relaygate.access} event of one IMAP or POP3 session (C{docs/logging.md})."""

from __future__ import annotations

from twisted.logger import Logger

from relaygate.addresses import ClientAddress
from relaygate.login.flow import LoginFlow
from relaygate.text import printable

# A module-level logger: as a class attribute, Logger would replace the namespace with the
# class's name, and operators filter the access log by this namespace.
_access_log = Logger(namespace="relaygate.access")


def log_session(
    protocol: str,
    client: ClientAddress,
    tls: str,
    flow: LoginFlow,
    *,
    attempts: int,
    outcome: str,
    from_client: int,
    from_backend: int,
    duration: float,
) -> None:
    """Emit the session's access event: who, from where, to which backend, how it ended."""
    _access_log.info(
        "{protocol} session from {client} user {user!r} backend {backend}: {outcome}, "
        "{bytes_from_client} bytes in, {bytes_from_backend} bytes out, {duration:.3f}s",
        kind=f"{protocol}.session",
        protocol=protocol,
        client=client.ip,
        client_port=client.port,
        listener=f"{client.local_ip}:{client.local_port}",
        tls=tls,
        user=printable(flow.user),
        backend=flow.backend_address,
        backend_tls=flow.backend_tls,
        attempts=attempts,
        outcome=outcome,
        bytes_from_client=from_client,
        bytes_from_backend=from_backend,
        duration=duration,
    )
