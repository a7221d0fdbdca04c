"""C{[smtp]}: the SMTP front's behaviour and limits, and how it talks to backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from relaygate.config.certificates import check_ca_bundle, check_client_certificate
from relaygate.config.routes import BACKEND_TLS_MODES, PROXY_PROTOCOL_VERSIONS
from relaygate.config.table import Table

SMTP_AUTH_METHODS: Final = ("none", "plain", "login", "cram-md5", "external")
SMTP_BACKEND_AUTH_MODES: Final = ("xclient", "plain", "none")


DEFAULT_SMTP_EXTENSIONS: Final = ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES")
KNOWN_SMTP_EXTENSIONS: Final = (*DEFAULT_SMTP_EXTENSIONS, "SMTPUTF8", "DSN")


@dataclass(frozen=True)
class SMTPConfig:
    """C{[smtp]}: the SMTP front's behaviour and limits, and how it talks to backends."""

    auth: tuple[str, ...] = ("none",)
    xclient: bool = True
    backend_tls: str = "none"
    backend_ca: str = ""
    backend_certificate: str = ""
    backend_key: str = ""
    max_message_size: int = 52428800
    max_recipients: int = 100
    greeting_delay: float = 0.0
    extensions: tuple[str, ...] = DEFAULT_SMTP_EXTENSIONS
    max_line_length: int = 2048
    max_errors: int = 5
    backend_timeout: float = 300.0
    backend_auth: str = "xclient"
    max_auth_attempts: int = 3
    backend_proxy_protocol: str = "none"
    backend_connection_cache: float = 2.0
    backend_connection_reuse: float = 300.0


def read_smtp(t: Table, base: str) -> SMTPConfig:
    """Read C{[smtp]} and check its backend CA bundle and client certificate."""
    smtp = SMTPConfig(
        auth=t.choices("auth", SMTP_AUTH_METHODS, ("none",)),
        xclient=t.boolean("xclient", True),
        backend_tls=t.choice("backend_tls", BACKEND_TLS_MODES, "none"),
        backend_ca=t.path("backend_ca", base),
        backend_certificate=t.path("backend_certificate", base),
        backend_key=t.path("backend_key", base),
        max_message_size=t.integer("max_message_size", 52428800, minimum=1),
        max_recipients=t.integer("max_recipients", 100, minimum=1),
        greeting_delay=t.number("greeting_delay", 0.0),
        extensions=tuple(e.upper() for e in t.strings("extensions", DEFAULT_SMTP_EXTENSIONS)),
        max_line_length=t.integer("max_line_length", 2048, minimum=512),
        max_errors=t.integer("max_errors", 5, minimum=1),
        backend_timeout=t.number("backend_timeout", 300.0, minimum=0.001),
        backend_auth=t.choice("backend_auth", SMTP_BACKEND_AUTH_MODES, "xclient"),
        max_auth_attempts=t.integer("max_auth_attempts", 3, minimum=1),
        backend_proxy_protocol=t.choice("backend_proxy_protocol", PROXY_PROTOCOL_VERSIONS, "none"),
        backend_connection_cache=t.number("backend_connection_cache", 2.0),
        backend_connection_reuse=t.number("backend_connection_reuse", 300.0, minimum=0.001),
    )
    for extension in smtp.extensions:
        if extension not in KNOWN_SMTP_EXTENSIONS:
            raise t.error(
                "extensions",
                f"{extension!r} is not one of {', '.join(KNOWN_SMTP_EXTENSIONS)}",
            )
    if not smtp.auth:
        raise t.error("auth", 'needs at least one method ("none" for no AUTH)')
    if smtp.backend_auth == "xclient" and not smtp.xclient and smtp.auth != ("none",):
        raise t.error("backend_auth", '"xclient" needs xclient = true')
    check_ca_bundle(t, "backend_ca", smtp.backend_ca)
    check_client_certificate(t, smtp.backend_certificate, smtp.backend_key)
    t.finish()
    return smtp
