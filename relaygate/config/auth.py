"""C{[auth]}: the nginx-compatible auth_http service."""

from __future__ import annotations

from dataclasses import dataclass

from relaygate.config.certificates import check_ca_bundle
from relaygate.config.table import Table


@dataclass(frozen=True)
class AuthConfig:
    """C{[auth]}: the nginx-compatible auth_http service; absent means the embedded table."""

    http: tuple[str, ...] = ()
    timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    pass_client_cert: bool = False
    ca: str = ""
    """CAs that verify an C{https://} service: a PEM bundle, or C{""}/C{"system"} (the OS)."""


def read_auth(t: Table, base: str) -> AuthConfig:
    """Read C{[auth]}; C{http} may be one URL or a list of them (tried in order)."""
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
    check_ca_bundle(t, "ca", auth.ca)
    return auth
