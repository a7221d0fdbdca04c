"""Read relaygate's TOML configuration into frozen dataclasses.

Every problem is reported as ``FILE: key: what is wrong`` (L{ConfigError}) before anything
listens, so an operator sees the one line to fix instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from relaygate.addresses import HostPort, parse_host_port

PROTOCOLS: Final = ("smtp", "imap", "pop3")
LISTEN_TLS_MODES: Final = ("none", "starttls", "starttls-required", "implicit")
BACKEND_TLS_MODES: Final = ("none", "opportunistic", "required", "implicit")
SMTP_AUTH_METHODS: Final = ("none", "plain", "login", "cram-md5", "external")
SMTP_BACKEND_AUTH_MODES: Final = ("xclient", "plain", "none")
PROXY_PROTOCOL_VERSIONS: Final = ("none", "v1", "v2")
DEFAULT_SMTP_EXTENSIONS: Final = ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES")
KNOWN_SMTP_EXTENSIONS: Final = (*DEFAULT_SMTP_EXTENSIONS, "SMTPUTF8", "DSN")


class ConfigError(Exception):
    """A configuration problem, already worded as ``FILE: key: what is wrong``."""


@dataclass(frozen=True)
class ServerConfig:
    """C{[server]}: process-wide settings."""

    name: str
    workers: int = 1
    idle_timeout: float = 300.0
    connect_timeout: float = 10.0
    session_timeout: float = 3600.0


@dataclass(frozen=True)
class ListenConfig:
    """One C{[[listen]]} entry: a socket, its protocol and how TLS and PROXY apply to it."""

    protocol: str
    address: HostPort
    tls: str = "none"
    proxy_protocol: bool = False


@dataclass(frozen=True)
class TLSConfig:
    """C{[tls]}: the front door's certificates, protocol versions and client-certificate policy.

    C{certificate} is a PEM chain file (C{key} names its key, or the file holds it too) or a
    directory of C{NAME.pem} files chosen by SNI; see C{relaygate.tls.ServerTLS}.
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


@dataclass(frozen=True)
class AuthConfig:
    """C{[auth]}: the nginx-compatible auth_http service; absent means the embedded table."""

    http: tuple[str, ...] = ()
    timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    pass_client_cert: bool = False
    ca: str = ""
    """CAs that verify an C{https://} service: a PEM bundle, or C{""}/C{"system"} (the OS)."""


@dataclass(frozen=True)
class RouteConfig:
    """One C{[[route]]}: which backends serve a recipient (or login) domain."""

    protocol: str
    match: str
    backends: tuple[HostPort, ...]
    backend_tls: str = ""
    """The route's own C{backend_tls}; C{""} takes the protocol section's value."""
    backend_proxy_protocol: str = ""
    """The route's own C{backend_proxy_protocol}; C{""} takes the protocol section's value."""


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


@dataclass(frozen=True)
class RealIPConfig:
    """C{[realip]}: who may send a PROXY protocol header (nginx's C{set_real_ip_from})."""

    trusted: tuple[str, ...] = ()
    header_timeout: float = 30.0


@dataclass(frozen=True)
class LimitsConfig:
    """C{[limits]}: per client address connection and login limits (0 turns one off)."""

    connections_per_address: int = 0
    connections_per_minute: int = 0
    auth_failures_per_hour: int = 0

    @property
    def any(self) -> bool:
        """True when at least one limit is on."""
        return bool(
            self.connections_per_address
            or self.connections_per_minute
            or self.auth_failures_per_hour
        )


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


@dataclass(frozen=True)
class DemoConfig:
    """C{[demo]}: the embedded demo backend that stores each message as a file."""

    address: HostPort
    directory: str


@dataclass(frozen=True)
class Config:
    """The whole configuration, as read from one file."""

    path: str
    server: ServerConfig
    listen: tuple[ListenConfig, ...]
    tls: TLSConfig
    auth: AuthConfig
    routes: tuple[RouteConfig, ...]
    smtp: SMTPConfig
    demo: DemoConfig | None = None
    imap: IMAPConfig = IMAPConfig()
    pop3: POP3Config = POP3Config()
    realip: RealIPConfig = RealIPConfig()
    limits: LimitsConfig = LimitsConfig()


_MISSING: Any = object()


class _Table:
    """A TOML table being read: typed getters that report errors by key, and unknown keys."""

    def __init__(self, file: str, prefix: str, data: dict[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    def error(self, key: str, what: str) -> ConfigError:
        """Build the error for C{key} in this table."""
        return ConfigError(f"{self.file}: {self.prefix}{key}: {what}")

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise self.error(key, f"expected {kind_name}, got {value!r}")
        return value

    def string(self, key: str, default: str = _MISSING) -> str:
        value: str = self._get(key, default, (str,), "a string")
        if any(c in value for c in "\r\n\0"):
            raise self.error(key, "must not contain CR, LF or NUL")
        return value

    def number(self, key: str, default: float = _MISSING, minimum: float = 0.0) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, got {value:g}")
        return value

    def integer(self, key: str, default: int = _MISSING, minimum: int = 0) -> int:
        value: int = self._get(key, default, (int,), "an integer")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def boolean(self, key: str, default: bool = _MISSING) -> bool:
        value: bool = self._get(key, default, (bool,), "true or false")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str = _MISSING) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}; got {value!r}")
        return value

    def strings(self, key: str, default: Iterable[str] = _MISSING) -> tuple[str, ...]:
        value = self._get(key, default, (list, tuple), "a list of strings")
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"expected a list of strings, got item {item!r}")
            if any(c in item for c in "\r\n\0"):
                raise self.error(key, "must not contain CR, LF or NUL")
        return tuple(value)

    def choices(
        self, key: str, choices: Sequence[str], default: Iterable[str] = _MISSING
    ) -> tuple[str, ...]:
        values = self.strings(key, default)
        for value in values:
            if value not in choices:
                raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return values

    def address(self, key: str, default: HostPort = _MISSING, any_port: bool = False) -> HostPort:
        if key not in self.data and default is not _MISSING:
            self.used.add(key)
            return default
        text = self.string(key)
        try:
            return parse_host_port(text, any_port=any_port)
        except ValueError as e:
            raise self.error(key, f"{text!r}: {e}") from None

    def table(self, key: str) -> _Table:
        value = self._get(key, {}, (dict,), "a table")
        return _Table(self.file, f"{self.prefix}{key}.", value)

    def tables(self, key: str) -> list[_Table]:
        value = self._get(key, [], (list,), "an array of tables ([[" + key + "]])")
        result = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(key, f"expected [[{key}]] tables, got {item!r}")
            result.append(_Table(self.file, f"{self.prefix}{key}[{index}].", item))
        return result

    def path(self, key: str, base: str, default: str = "") -> str:
        """A file path, relative to the config file's directory, that must exist if set."""
        value = self.string(key, default)
        if not value or value == "system":
            return value
        full = os.path.normpath(os.path.join(base, value))
        if not os.path.exists(full):
            raise self.error(key, f"{value!r} does not exist")
        return full

    def finish(self) -> None:
        """Refuse keys this table does not know (a typo must not be silently ignored)."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _read_server(t: _Table) -> ServerConfig:
    workers_raw = t.data.get("workers", 1)
    t.used.add("workers")
    if workers_raw == "auto":
        workers = os.cpu_count() or 1
    elif isinstance(workers_raw, int) and not isinstance(workers_raw, bool) and workers_raw >= 1:
        workers = workers_raw
    else:
        raise t.error("workers", f'expected a number of processes or "auto", got {workers_raw!r}')
    server = ServerConfig(
        name=t.string("name", socket.getfqdn() or "localhost"),
        workers=workers,
        idle_timeout=t.number("idle_timeout", 300.0, minimum=0.001),
        connect_timeout=t.number("connect_timeout", 10.0, minimum=0.001),
        session_timeout=t.number("session_timeout", 3600.0, minimum=0.001),
    )
    if not server.name or any(c.isspace() for c in server.name):
        raise t.error("name", f"{server.name!r} is not a host name")
    t.finish()
    return server


def _read_listen(t: _Table) -> ListenConfig:
    listen = ListenConfig(
        protocol=t.choice("protocol", PROTOCOLS),
        address=t.address("address", any_port=True),
        tls=t.choice("tls", LISTEN_TLS_MODES, "none"),
        proxy_protocol=t.boolean("proxy_protocol", False),
    )
    t.finish()
    return listen


def _read_tls(t: _Table, base: str) -> TLSConfig:
    # Imported here: relaygate.tls imports the routing types, which import this module.
    from relaygate import tls as tls_module

    defaults = TLSConfig()
    tls = TLSConfig(
        certificate=t.path("certificate", base),
        key=t.path("key", base),
        client_ca=t.path("client_ca", base),
        verify_client=t.choice("verify_client", tls_module.VERIFY_CLIENT_MODES, "off"),
        protocols=t.choices("protocols", tuple(tls_module.TLS_VERSIONS), defaults.protocols),
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
    known = list(tls_module.TLS_VERSIONS)
    wanted = sorted(known.index(p) for p in set(tls.protocols))
    if wanted != list(range(wanted[0], wanted[-1] + 1)):
        raise t.error("protocols", "must be a range without gaps, e.g. TLSv1.2 and TLSv1.3")
    try:
        tls_module.check_cipher_string(tls.ciphers)
    except tls_module.CertificateError as e:
        raise t.error("ciphers", str(e)) from None
    try:
        if os.path.isdir(tls.certificate):
            tls_module.check_directory(tls.certificate)
        elif tls.certificate:
            tls_module.load_key_and_chain(tls.certificate, tls.key)
    except tls_module.PrivateKeyError as e:
        raise t.error("key" if tls.key else "certificate", str(e)) from None
    except tls_module.CertificateError as e:
        raise t.error("certificate", str(e)) from None
    try:
        if tls.client_ca:
            tls_module.load_ca_bundle(tls.client_ca)
    except tls_module.CertificateError as e:
        raise t.error("client_ca", str(e)) from None
    return tls


def _read_auth(t: _Table, base: str) -> AuthConfig:
    t.used.add("http")
    raw = t.data.get("http", ())
    urls = (raw,) if isinstance(raw, str) else t.strings("http", ())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise t.error("http", f"{url!r} is not an http:// or https:// URL")
        if any(c in url for c in "\r\n\0 "):
            raise t.error("http", f"{url!r} is not a URL")
    headers_table = t.table("headers")
    headers = []
    for name in headers_table.data:
        value = headers_table.string(name)
        if not name or not all(c.isalnum() or c == "-" for c in name):
            raise headers_table.error(name, "is not an HTTP header name")
        headers.append((name, value))
    auth = AuthConfig(
        http=tuple(urls),
        timeout=t.number("timeout", 5.0, minimum=0.001),
        headers=tuple(headers),
        pass_client_cert=t.boolean("pass_client_cert", False),
        ca=t.path("ca", base),
    )
    t.finish()
    _check_ca_bundle(t, "ca", auth.ca)
    return auth


def _check_ca_bundle(t: _Table, key: str, path: str) -> None:
    """A CA bundle key must name a file with at least one PEM certificate (or be "system")."""
    if not path or path == "system":
        return
    from relaygate import tls as tls_module

    try:
        tls_module.load_ca_bundle(path)
    except tls_module.CertificateError as e:
        raise t.error(key, str(e)) from None


def _read_route(t: _Table) -> RouteConfig:
    protocol = t.choice("protocol", (*PROTOCOLS, "*"), "*")
    match = t.string("match").lower()
    if not match or any(c.isspace() or c in "@<>" for c in match):
        raise t.error("match", f'{match!r} is not a domain or "*"')
    backends_text = t.strings("backends")
    if not backends_text:
        raise t.error("backends", "needs at least one host:port")
    backends = []
    for text in backends_text:
        try:
            backends.append(parse_host_port(text))
        except ValueError as e:
            raise t.error("backends", f"{text!r}: {e}") from None
    backend_tls = t.choice("backend_tls", ("", *BACKEND_TLS_MODES), "")
    route = RouteConfig(
        protocol=protocol,
        match=match,
        backends=tuple(backends),
        backend_tls=backend_tls,
        backend_proxy_protocol=t.choice(
            "backend_proxy_protocol", ("", *PROXY_PROTOCOL_VERSIONS), ""
        ),
    )
    t.finish()
    return route


def _read_smtp(t: _Table, base: str) -> SMTPConfig:
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
    _check_ca_bundle(t, "backend_ca", smtp.backend_ca)
    _check_client_certificate(t, smtp.backend_certificate, smtp.backend_key)
    t.finish()
    return smtp


def _read_realip(t: _Table) -> RealIPConfig:
    trusted = t.strings("trusted", ())
    for network in trusted:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise t.error("trusted", f"{network!r} is not an address or CIDR network") from None
    realip = RealIPConfig(
        trusted=trusted, header_timeout=t.number("header_timeout", 30.0, minimum=0.001)
    )
    t.finish()
    return realip


def _read_limits(t: _Table) -> LimitsConfig:
    limits = LimitsConfig(
        connections_per_address=t.integer("connections_per_address", 0),
        connections_per_minute=t.integer("connections_per_minute", 0),
        auth_failures_per_hour=t.integer("auth_failures_per_hour", 0),
    )
    t.finish()
    return limits


def _check_client_certificate(t: _Table, certificate: str, key: str) -> None:
    """C{backend_certificate}/C{backend_key}: a chain and its key that belong together."""
    if key and not certificate:
        raise t.error("backend_key", "needs backend_certificate")
    if not certificate:
        return
    from relaygate import tls as tls_module

    try:
        tls_module.load_key_and_chain(certificate, key)
    except tls_module.PrivateKeyError as e:
        raise t.error("backend_key" if key else "backend_certificate", str(e)) from None
    except tls_module.CertificateError as e:
        raise t.error("backend_certificate", str(e)) from None


def _read_capabilities(
    t: _Table, default: tuple[str, ...], generated: tuple[str, ...]
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
    t: _Table,
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
    _check_ca_bundle(t, "backend_ca", values["backend_ca"])
    _check_client_certificate(t, values["backend_certificate"], values["backend_key"])
    return values


def _read_imap(t: _Table, base: str) -> IMAPConfig:
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


def _read_pop3(t: _Table, base: str) -> POP3Config:
    d = POP3Config()
    pop3 = replace(
        d,
        **_read_login_section(t, base, d, POP3_AUTH_METHODS, ("STLS", "USER"), ("user", "plain")),
    )
    t.finish()
    return pop3


def _read_demo(t: _Table, base: str) -> DemoConfig | None:
    if not t.data:
        return None
    demo = DemoConfig(
        address=t.address("address"),
        directory=os.path.normpath(os.path.join(base, t.string("directory", "var/demo-mail"))),
    )
    t.finish()
    return demo


def parse(data: dict[str, Any], path: str) -> Config:
    """Build a L{Config} from already-decoded TOML C{data} that came from C{path}."""
    root = _Table(path, "", data)
    base = os.path.dirname(os.path.abspath(path))
    listen = tuple(_read_listen(t) for t in root.tables("listen"))
    if not listen:
        raise root.error("listen", "needs at least one [[listen]] entry")
    seen: set[HostPort] = set()
    for index, item in enumerate(listen):
        if item.address in seen:
            raise root.error(f"listen[{index}].address", f"{item.address} is listed twice")
        seen.add(item.address)
    config = Config(
        path=path,
        server=_read_server(root.table("server")),
        listen=listen,
        tls=_read_tls(root.table("tls"), base),
        auth=_read_auth(root.table("auth"), base),
        routes=tuple(_read_route(t) for t in root.tables("route")),
        smtp=_read_smtp(root.table("smtp"), base),
        demo=_read_demo(root.table("demo"), base),
        imap=_read_imap(root.table("imap"), base),
        pop3=_read_pop3(root.table("pop3"), base),
        realip=_read_realip(root.table("realip")),
        limits=_read_limits(root.table("limits")),
    )
    root.finish()
    _check_consistency(root, config)
    return config


def _check_consistency(root: _Table, config: Config) -> None:
    """Cross-section rules: what one section needs from another."""
    if not config.auth.http:
        # The embedded table passes the client's own password to the backend; after APOP,
        # CRAM-MD5 or EXTERNAL there is none, so only an auth service can serve them.
        for section, methods in (("imap", config.imap.auth), ("pop3", config.pop3.auth)):
            for method in ("apop", "cram-md5", "external"):
                if method in methods:
                    raise root.error(f"{section}.auth", f"{method!r} needs [auth] http")
    smtp_mechanisms = [method for method in config.smtp.auth if method != "none"]
    if smtp_mechanisms and not config.auth.http:
        # The embedded table checks no password: only an auth service can say yes to a login.
        raise root.error("smtp.auth", f"{smtp_mechanisms[0]!r} needs [auth] http")
    if "external" in config.smtp.auth and config.tls.verify_client == "off":
        raise root.error("smtp.auth", "'external' needs [tls] verify_client and client_ca")
    for section, methods in (("imap", config.imap.auth), ("pop3", config.pop3.auth)):
        # EXTERNAL is offered only to a client whose certificate verified.
        if "external" in methods and config.tls.verify_client == "off":
            raise root.error(
                f"{section}.auth", "'external' needs [tls] verify_client and client_ca"
            )
    for index, listen in enumerate(config.listen):
        if listen.tls != "none" and not config.tls.certificate:
            raise root.error(f"listen[{index}].tls", f"{listen.tls!r} needs [tls] certificate")
        if listen.proxy_protocol and not config.realip.trusted:
            raise root.error(
                f"listen[{index}].proxy_protocol", "needs [realip] trusted (who may send it)"
            )
        if not config.auth.http and not any(
            r.protocol in (listen.protocol, "*") for r in config.routes
        ):
            raise root.error(
                f"listen[{index}].protocol",
                f"no [auth] http and no [[route]] for {listen.protocol!r}: nothing to relay to",
            )


def load(path: str) -> Config:
    """Read and check the TOML file at C{path}.

    @raise ConfigError: for any problem, worded ``FILE: key: what is wrong``.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, path)
