"""What an SMTP session knows about its client and its mail transaction, as plain values.

The front keeps these up to date; the submission logic and the backend leg read them. Neither
reaches into the front for them, and this module imports nothing that does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaygate.addresses import HostPort
from relaygate.observe import TransactionRecord
from relaygate.routing.router import ClientTLS, ProxyAddresses
from relaygate.smtp.replies import Reply


@dataclass
class ClientFacts:
    """The client as the session has learnt it: address, HELO, TLS, PROXY header."""

    ip: str = ""
    port: int = 0
    local_ip: str = ""
    local_port: int = 0
    label: str = ""
    helo: bytes | None = None
    extended: bool = False
    tls: ClientTLS | None = None
    proxy: ProxyAddresses | None = None


@dataclass
class Transaction:
    """One mail transaction: from MAIL to the final reply (or RSET)."""

    mail_line: bytes
    sender: bytes
    params: bytes
    record: TransactionRecord
    route: tuple[HostPort, ...] | None = None
    backend_mail: Reply | None = None
    broken: Reply | None = None
    accepted: int = 0
    recipients: int = 0
    done: bool = False


def bracket_path(path: bytes) -> bytes:
    """The path with angle brackets, as the backend must see it."""
    return path if path.startswith(b"<") else b"<" + path + b">"


def path_text(path: bytes) -> str:
    """The address inside a bracketed path, as text for the transaction's record."""
    return path[1:-1].decode("utf-8", "backslashreplace")


def size_param(params: bytes) -> int | None:
    """The value of a MAIL SIZE= parameter, if any (RFC 1870)."""
    for param in params.split():
        key, _, value = param.partition(b"=")
        if key.upper() == b"SIZE" and value.isdigit():
            return int(value)
    return None
