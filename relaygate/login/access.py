"""The C{relaygate.access} event of one IMAP or POP3 session (C{docs/logging.md})."""

from __future__ import annotations

from relaygate.addresses import ClientAddress
from relaygate.login.flow import LoginFlow
from relaygate.observe import publish
from relaygate.text import printable


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
    now: float,
    started: float,
) -> None:
    """Emit the session's access event: who, from where, to which backend, how it ended.

    Like the SMTP events (L{publish}): to the global log, or to the C{[log] access} file.
    """
    publish(
        "{protocol} session from {client} user {user!r} backend {backend}: {outcome}, "
        "{bytes_from_client} bytes in, {bytes_from_backend} bytes out, {duration:.3f}s",
        dict(
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
            duration=now - started,
        ),
        now,
    )
