"""C{[imap]} and C{[pop3]}: the login fronts' methods and limits, read the same way for both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from relaygate.config.certificates import check_ca_bundle, check_client_certificate
from relaygate.config.routes import BACKEND_TLS_MODES, PROXY_PROTOCOL_VERSIONS
from relaygate.config.table import Table

IMAP_AUTH_METHODS: Final = ("plain", "login", "cram-md5", "external")
POP3_AUTH_METHODS: Final = ("user", "plain", "login", "apop", "cram-md5", "external")
DEFAULT_IMAP_CAPABILITIES: Final = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ID")
DEFAULT_POP3_CAPABILITIES: Final = ("TOP", "UIDL", "RESP-CODES", "PIPELINING")


@dataclass(frozen=True)
class IMAPConfig:
    """C{[imap]}: the IMAP front's login methods and limits, and how it logs in to backends."""

    auth: tuple[str, ...] = ("plain", "login")
    capabilities: tuple[str, ...] = DEFAULT_IMAP_CAPABILITIES
    timeout: float = 60.0
    proxy_timeout: float = 1800.0
    max_line_length: int = 8192
    max_literal_size: int = 16384
    max_errors: int = 5
    max_login_failures: int = 3
    pass_error_message: bool = False
    send_id: bool = True
    xclient: bool = True
    backend_login: str = "login"
    backend_tls: str = "none"
    backend_ca: str = ""
    backend_certificate: str = ""
    backend_key: str = ""
    backend_proxy_protocol: str = "none"


@dataclass(frozen=True)
class POP3Config:
    """C{[pop3]}: the POP3 front's login methods and limits, and how it logs in to backends."""

    auth: tuple[str, ...] = ("user", "plain", "login")
    capabilities: tuple[str, ...] = DEFAULT_POP3_CAPABILITIES
    timeout: float = 60.0
    proxy_timeout: float = 1800.0
    max_line_length: int = 2048
    max_errors: int = 5
    max_login_failures: int = 3
    pass_error_message: bool = False
    xclient: bool = True
    backend_login: str = "user"
    backend_tls: str = "none"
    backend_ca: str = ""
    backend_certificate: str = ""
    backend_key: str = ""
    backend_proxy_protocol: str = "none"


def _read_capabilities(
    t: Table, default: tuple[str, ...], generated: tuple[str, ...]
) -> tuple[str, ...]:
    """A pre-auth capability list: atoms, without the ones the front adds itself."""
    values = t.strings("capabilities", default)
    for value in values:
        if not value or any(c.isspace() or c in '(){"\\' or not c.isprintable() for c in value):
            raise t.error("capabilities", f"{value!r} is not a capability name")
        if value.upper() in (*generated, "SASL") or value.upper().startswith("AUTH="):
            raise t.error(
                "capabilities", f"{value!r} comes from auth and the listener's tls; leave it out"
            )
    return values


def _read_login_section(
    t: Table,
    base: str,
    defaults: IMAPConfig | POP3Config,
    auth_methods: Sequence[str],
    generated: tuple[str, ...],
    backend_logins: tuple[str, ...],
) -> dict[str, Any]:
    """The keys C{[imap]} and C{[pop3]} share, read and checked the same way for both."""
    d = defaults
    values: dict[str, Any] = {
        "auth": t.choices("auth", auth_methods, d.auth),
        "capabilities": _read_capabilities(t, d.capabilities, generated),
        "timeout": t.number("timeout", d.timeout, minimum=0.001),
        "proxy_timeout": t.number("proxy_timeout", d.proxy_timeout, minimum=0.001),
        "max_line_length": t.integer("max_line_length", d.max_line_length, minimum=512),
        "max_errors": t.integer("max_errors", d.max_errors, minimum=1),
        "max_login_failures": t.integer("max_login_failures", d.max_login_failures, minimum=1),
        "pass_error_message": t.boolean("pass_error_message", d.pass_error_message),
        "xclient": t.boolean("xclient", d.xclient),
        "backend_login": t.choice("backend_login", backend_logins, d.backend_login),
        "backend_tls": t.choice("backend_tls", BACKEND_TLS_MODES, d.backend_tls),
        "backend_ca": t.path("backend_ca", base),
        "backend_certificate": t.path("backend_certificate", base),
        "backend_key": t.path("backend_key", base),
        "backend_proxy_protocol": t.choice(
            "backend_proxy_protocol", PROXY_PROTOCOL_VERSIONS, "none"
        ),
    }
    check_ca_bundle(t, "backend_ca", values["backend_ca"])
    check_client_certificate(t, values["backend_certificate"], values["backend_key"])
    return values


def read_imap(t: Table, base: str) -> IMAPConfig:
    """Read C{[imap]}: the shared login-front keys plus IMAP's own."""
    d = IMAPConfig()
    imap = replace(
        d,
        **_read_login_section(
            t, base, d, IMAP_AUTH_METHODS, ("STARTTLS", "LOGINDISABLED"), ("login", "plain")
        ),
        max_literal_size=t.integer("max_literal_size", d.max_literal_size, minimum=256),
        send_id=t.boolean("send_id", d.send_id),
    )
    t.finish()
    return imap


def read_pop3(t: Table, base: str) -> POP3Config:
    """Read C{[pop3]}: the shared login-front keys."""
    d = POP3Config()
    pop3 = replace(
        d,
        **_read_login_section(t, base, d, POP3_AUTH_METHODS, ("STLS", "USER"), ("user", "plain")),
    )
    t.finish()
    return pop3
