"""What the fronts ask a router, what it answers, and the L{Router} interface.

The names follow nginx's auth_http protocol (``Auth-Method``, ``Auth-User``, ``Auth-Server`` ...),
since that protocol is the compatibility target and the embedded table answers the same questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred

from relaygate.addresses import HostPort


@dataclass(frozen=True)
class ClientTLS:
    """The TLS facts of the client's connection, as nginx sends them in ``Auth-SSL-*``."""

    protocol: str = ""
    cipher: str = ""
    verify: str = "NONE"
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    fingerprint: str = ""
    certificate_pem: str = ""


@dataclass(frozen=True)
class ProxyAddresses:
    """Addresses a PROXY protocol header carried (``Proxy-Protocol-*`` headers)."""

    addr: str
    port: int
    server_addr: str
    server_port: int


@dataclass(frozen=True)
class AuthRequest:
    """One routing question: who is asking, with what credentials, for what.

    For SMTP without AUTH (method ``none``) the question is asked per recipient: C{mail_from}
    and C{rcpt_to} then hold the client's full command lines, as nginx sends them.
    """

    protocol: str
    client_ip: str
    client_port: int = 0
    method: str = "none"
    user: bytes = b""
    password: bytes = b""
    salt: bytes = b""
    attempt: int = 1
    client_host: str = ""
    helo: bytes = b""
    mail_from: bytes = b""
    rcpt_to: bytes = b""
    recipient: bytes = b""
    tls: ClientTLS | None = None
    proxy: ProxyAddresses | None = None

    def domain(self) -> str:
        """The domain routing looks at: the recipient's (SMTP) or the login's (IMAP/POP3)."""
        address = self.recipient if self.protocol == "smtp" and self.recipient else self.user
        _, at, domain = address.rpartition(b"@")
        return domain.decode("utf-8", "replace").lower() if at else ""


@dataclass(frozen=True)
class Accept:
    """Route the session: try C{backends} in order; C{user}/C{password} rewrite the login.

    C{backend_tls} is the route's own C{backend_tls} mode (a C{[[route]]} entry's); C{""} means
    the protocol section's; C{backend_proxy_protocol} likewise (C{v1}, C{v2} or C{none}).
    """

    backends: tuple[HostPort, ...]
    user: bytes | None = None
    password: bytes | None = None
    backend_tls: str = ""
    backend_proxy_protocol: str = ""
    details: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Refuse:
    """The router said no: C{message} is shown to the client.

    C{smtp_code} replaces SMTP's default reply code text (nginx's ``Auth-Error-Code``, e.g.
    ``"550 5.7.1"``); C{wait} is nginx's ``Auth-Wait``: delay the reply and let the client retry.
    """

    message: str
    smtp_code: str = ""
    wait: float | None = None


Decision = Accept | Refuse


class RouterUnavailable(Exception):
    """The router could not answer (down, timed out, garbage): a temporary failure, never 5xx."""


class Router(Protocol):
    """Decides which backend serves a session."""

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        """Answer C{request}; fail with L{RouterUnavailable} for a temporary problem."""
