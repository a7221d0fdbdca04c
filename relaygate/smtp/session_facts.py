"""What an SMTP session knows about its client and its mail transaction, as plain values.

The front keeps these up to date; the submission logic and the backend leg read them. Neither
reaches into the front for them, and this module imports nothing that does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.interfaces import ITransport

from relaygate.addresses import HostPort
from relaygate.observe import SessionRecord, TransactionRecord
from relaygate.proxy_protocol import proxy_addresses
from relaygate.routing.router import ClientTLS, ProxyAddresses
from relaygate.smtp.replies import Reply


@dataclass
class ClientFacts:
    """The client as the session has learnt it: address, HELO, TLS, PROXY header."""

    ip: str = ""
    port: int = 0
    label: str = ""
    helo: bytes | None = None
    extended: bool = False
    tls: ClientTLS | None = None
    proxy: ProxyAddresses | None = None

    _host: Callable[[], object] | None = field(default=None, repr=False)
    _local: tuple[str, int] = field(default=("", 0), repr=False)

    def learn(self, transport: ITransport) -> None:
        """Take the addresses from a new connection's transport, and what the listener's
        wrappers know (the PROXY header)."""
        peer = transport.getPeer()
        self.ip, self.port = str(getattr(peer, "host", "")), int(getattr(peer, "port", 0))
        self._host = transport.getHost
        self.label = f"{self.ip}:{self.port}"
        self.proxy = proxy_addresses(transport)

    @property
    def local_ip(self) -> str:
        """The address the client connected to (see L{local_port})."""
        return self._local_address()[0]

    @property
    def local_port(self) -> int:
        """The port the client connected to. Asked of the socket (a system call) only when
        first needed, by a PROXY header to the backend: most sessions never need it."""
        return self._local_address()[1]

    def _local_address(self) -> tuple[str, int]:
        host, self._host = self._host, None
        if host is not None:
            address = host()
            self._local = (str(getattr(address, "host", "")), int(getattr(address, "port", 0)))
        return self._local


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

    def finish(self, session: SessionRecord, outcome: str, final: str, now: float) -> None:
        """Close this transaction's record and log it."""
        session.transactions += 1
        self.record.outcome = outcome
        self.record.final = final
        self.record.emit(session, now)


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
