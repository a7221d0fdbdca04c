"""What each SMTP session needs from the config, computed once per listener.

A value module: the front, its backend leg and the submission logic all read it, and it
imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relaygate.backend.policy import BackendPolicy
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.tls.server import ServerTLS


@dataclass(frozen=True)
class SMTPSettings:
    """One SMTP listener's settings: limits, extensions, TLS on both legs, AUTH."""

    name: bytes
    listener: str
    idle_timeout: float
    session_timeout: float
    max_line_length: int
    max_errors: int
    max_recipients: int
    max_message_size: int
    extensions: tuple[bytes, ...]
    xclient: bool
    tls_mode: str = "none"
    server_tls: ServerTLS | None = field(default=None, compare=False)
    backend: BackendPolicy = field(default_factory=BackendPolicy)
    """How backend connections are made and secured (C{backend_*} keys, timeouts)."""
    auth: tuple[str, ...] = ("none",)
    backend_auth: str = "none"
    max_auth_attempts: int = 3
    greeting_delay: float = 0.0
    backend_connection_cache: float = 0.0
    """Seconds an idle, clean backend connection is kept for the next session (0: none)."""
    backend_connection_reuse: float = 300.0
    """Seconds after which a backend connection is no longer kept for another session."""

    @classmethod
    def from_config(
        cls, config: Config, listen: ListenConfig, server_tls: ServerTLS | None
    ) -> SMTPSettings:
        """Take the SMTP front's settings for C{listen} from C{config}; C{server_tls} is the
        listener's server TLS context, built by the service."""
        smtp_config = config.smtp
        extensions = []
        for name in smtp_config.extensions:
            if name == "SIZE":
                extensions.append(f"SIZE {smtp_config.max_message_size}".encode())
            else:
                extensions.append(name.encode())
        return cls(
            name=config.server.name.encode("idna"),
            listener=str(listen.address),
            idle_timeout=config.server.idle_timeout,
            session_timeout=config.server.session_timeout,
            max_line_length=smtp_config.max_line_length,
            max_errors=smtp_config.max_errors,
            max_recipients=smtp_config.max_recipients,
            max_message_size=smtp_config.max_message_size,
            extensions=tuple(extensions),
            xclient=smtp_config.xclient,
            tls_mode=listen.tls,
            server_tls=server_tls,
            backend=BackendPolicy(
                tls=smtp_config.backend_tls,
                ca=smtp_config.backend_ca,
                certificate=smtp_config.backend_certificate,
                key=smtp_config.backend_key,
                proxy_protocol=smtp_config.backend_proxy_protocol,
                connect_timeout=config.server.connect_timeout,
                reply_timeout=smtp_config.backend_timeout,
            ),
            auth=smtp_config.auth,
            backend_auth=smtp_config.backend_auth,
            max_auth_attempts=smtp_config.max_auth_attempts,
            greeting_delay=smtp_config.greeting_delay,
            backend_connection_cache=smtp_config.backend_connection_cache,
            backend_connection_reuse=smtp_config.backend_connection_reuse,
        )
