"""The auth_http request: nginx's headers, in nginx's order, with nginx's escaping.

Read from nginx's ``src/mail/ngx_mail_auth_http_module.c`` (C{ngx_mail_auth_http_create_request}),
so an auth service written for nginx gets what it expects; ``docs/auth-http.md`` lists the
headers. No I/O: L{relaygate.routing.http} sends what L{request_headers} builds.
"""

from __future__ import annotations

import re
from typing import Final

from twisted.web.http_headers import Headers

from relaygate.routing.raw_headers import canonical_name, headers_from_raw
from relaygate.routing.router import AuthRequest

# nginx's ngx_mail_auth_http_method[]: LOGIN and USER/PASS are reported as "plain".
AUTH_METHODS: Final[dict[str, bytes]] = {
    "plain": b"plain",
    "login": b"plain",
    "login-username": b"plain",
    "user": b"plain",
    "apop": b"apop",
    "cram-md5": b"cram-md5",
    "external": b"external",
    "none": b"none",
}
_PROTOCOLS: Final[dict[str, bytes]] = {"smtp": b"smtp", "imap": b"imap", "pop3": b"pop3"}
# NGX_ESCAPE_MAIL_AUTH (the "memcached" table in src/core/ngx_string.c): bytes 0x00-0x1F,
# space and "%" become %XX with upper-case hex digits; everything else, UTF-8 too, is kept.
_NEEDS_ESCAPE: Final = re.compile(rb"[\x00-\x20%]")
_UNSAFE: Final = re.compile(rb"[\r\n\x00]")
# The checked headers' names as nginx writes them, by the name Headers stores: for log events.
NGINX_NAMES: Final = (
    "Auth-Salt",
    "Client-IP",
    "Client-Host",
    "Proxy-Protocol-Addr",
    "Proxy-Protocol-Port",
    "Proxy-Protocol-Server-Addr",
    "Proxy-Protocol-Server-Port",
    "Auth-SMTP-Helo",
    "Auth-SMTP-From",
    "Auth-SMTP-To",
    "Auth-SSL",
    "Auth-SSL-Protocol",
    "Auth-SSL-Cipher",
    "Auth-SSL-Verify",
    "Auth-SSL-Subject",
    "Auth-SSL-Issuer",
    "Auth-SSL-Serial",
    "Auth-SSL-Fingerprint",
)
_NGINX_NAMES: Final = {canonical_name(name.encode("ascii")): name for name in NGINX_NAMES}


def escape_auth_value(value: bytes) -> bytes:
    """Escape C{value} as nginx does for ``Auth-User``, ``Auth-Pass`` and ``Auth-SSL-Cert``."""
    if _NEEDS_ESCAPE.search(value) is None:
        return value
    return _NEEDS_ESCAPE.sub(_percent, value)


def _percent(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match[0][0]


def configured_header(name: str, value: str) -> tuple[bytes, bytes]:
    """A configured header as L{Headers} would store it: canonical name, CR and LF made spaces.

    Done once here, so that each request can skip those steps (L{headers_from_raw}).
    """
    headers = Headers()
    headers.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
    [(raw_name, [raw_value])] = headers.getAllRawHeaders()
    return raw_name, raw_value


class UnsendableError(Exception):
    """A request header would carry CR, LF or NUL, or a value nginx has no header text for."""

    def __init__(self, header: str, value: object) -> None:
        super().__init__(header)
        self.header = header
        self.value = value


def request_headers(
    request: AuthRequest,
    host: bytes,
    static: tuple[tuple[bytes, bytes], ...] = (),
    pass_client_cert: bool = False,
) -> Headers:
    """The request headers, in nginx's order (ngx_mail_auth_http_create_request).

    C{host} is the Host header's value and C{static} the configured headers, both already as
    L{Headers} stores them (L{configured_header}).

    @raise UnsendableError: a value would carry CR, LF or NUL, or has no header text.
    """
    method = AUTH_METHODS.get(request.method)
    if method is None:
        raise UnsendableError("Auth-Method", request.method)
    protocol = _PROTOCOLS.get(request.protocol)
    if protocol is None:
        raise UnsendableError("Auth-Protocol", request.protocol)
    # Values that are not escaped must be checked for CR, LF and NUL. Names are written in
    # Headers' canonical case (tests/test_routing_http.py RequestHeadersTests pins them).
    checked: list[tuple[bytes, bytes]] = []
    if request.salt and method in (b"apop", b"cram-md5"):
        # nginx keeps the challenge's CRLF in the salt and sends it as the line end.
        checked.append((b"Auth-Salt", request.salt.removesuffix(b"\r\n")))
    checked.append((b"Client-Ip", request.client_ip.encode("ascii", "replace")))
    if request.client_host:
        checked.append((b"Client-Host", request.client_host.encode("utf-8")))
    proxy = request.proxy
    if proxy is not None:
        checked += (
            (b"Proxy-Protocol-Addr", proxy.addr.encode("ascii", "replace")),
            (b"Proxy-Protocol-Port", b"%d" % proxy.port),
            (b"Proxy-Protocol-Server-Addr", proxy.server_addr.encode("ascii", "replace")),
            (b"Proxy-Protocol-Server-Port", b"%d" % proxy.server_port),
        )
    if method == b"none":
        checked += (
            (b"Auth-Smtp-Helo", request.helo),
            (b"Auth-Smtp-From", request.mail_from),
            (b"Auth-Smtp-To", request.rcpt_to),
        )
    tls = request.tls
    if tls is not None:
        checked.append((b"Auth-Ssl", b"on"))
        for name, text in (
            (b"Auth-Ssl-Protocol", tls.protocol),
            (b"Auth-Ssl-Cipher", tls.cipher),
            (b"Auth-Ssl-Verify", tls.verify),
            (b"Auth-Ssl-Subject", tls.subject),
            (b"Auth-Ssl-Issuer", tls.issuer),
            (b"Auth-Ssl-Serial", tls.serial),
            (b"Auth-Ssl-Fingerprint", tls.fingerprint),
        ):
            if text:
                checked.append((name, text.encode("utf-8")))
    if _UNSAFE.search(b"".join([value for _, value in checked])) is not None:
        for name, value in checked:
            if _UNSAFE.search(value) is not None:
                raise UnsendableError(_NGINX_NAMES.get(name, name.decode("ascii")), value)

    # Every value here is escaped, a constant or checked above, and every name is in
    # Headers' canonical case: headers_from_raw skips Twisted's second check of each.
    raw = {
        b"Host": [host],
        b"Auth-Method": [method],
        b"Auth-User": [escape_auth_value(request.user)],
        b"Auth-Pass": [escape_auth_value(request.password)],
    }
    position = 0
    if checked[0][0] == b"Auth-Salt":
        raw[b"Auth-Salt"] = [checked[0][1]]
        position = 1
    raw[b"Auth-Protocol"] = [protocol]
    raw[b"Auth-Login-Attempt"] = [b"%d" % request.attempt]
    for index in range(position, len(checked)):
        name, value = checked[index]
        raw[name] = [value]
    if tls is not None and pass_client_cert and tls.certificate_pem:
        pem = tls.certificate_pem.encode("ascii", "replace")
        raw[b"Auth-Ssl-Cert"] = [escape_auth_value(pem)]
    for name, value in static:
        values = raw.get(name)
        if values is None:
            raw[name] = [value]
        else:
            values.append(value)
    return headers_from_raw(raw)
