"""Access logging: one structured event per SMTP transaction and per session.

Events go to the ``relaygate.access`` namespace with every field an operator needs, so a JSON
observer (``twistd --logger``) or a text log both carry the whole story of a message. The
fields are documented in docs/logging.md. No password ever appears in an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

access_log = Logger(namespace="relaygate.access")


@dataclass
class RecipientOutcome:
    """One RCPT: the address and the reply the client got for it."""

    address: str
    reply: str


@dataclass
class TransactionRecord:
    """Facts about one SMTP transaction (MAIL to the final reply), gathered as it runs."""

    started: float
    sender: str = ""
    recipients: list[RecipientOutcome] = field(default_factory=list)
    backend: str = ""
    backend_tls: str = ""
    size: int = 0
    final: str = ""
    outcome: str = "abandoned"

    def emit(self, session: SessionRecord, now: float) -> None:
        """Log this transaction as one C{relaygate.access} event."""
        access_log.info(
            "smtp transaction from {client} <{sender}> to {rcpt_count} recipient(s) via "
            "{backend}: {outcome} {final}",
            kind="smtp.transaction",
            session_id=session.session_id,
            client=session.client,
            listener=session.listener,
            tls=session.tls,
            helo=session.helo,
            user=session.user,
            sender=self.sender,
            recipients=[(r.address, r.reply) for r in self.recipients],
            rcpt_count=len(self.recipients),
            accepted=sum(1 for r in self.recipients if r.reply.startswith("2")),
            backend=self.backend,
            backend_tls=self.backend_tls,
            size=self.size,
            final=self.final,
            outcome=self.outcome,
            duration=round(now - self.started, 6),
        )


@dataclass
class SessionRecord:
    """Facts about one client connection, logged when it closes."""

    session_id: str
    client: str
    listener: str
    started: float
    tls: str = ""
    helo: str = ""
    user: str = ""
    transactions: int = 0
    delivered: int = 0
    bytes_in: int = 0
    end: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def emit(self, protocol: str, now: float) -> None:
        """Log this session as one C{relaygate.access} event."""
        access_log.info(
            "{protocol} session {session_id} from {client} closed: {end}",
            kind=f"{protocol}.session",
            protocol=protocol,
            session_id=self.session_id,
            client=self.client,
            listener=self.listener,
            tls=self.tls,
            helo=self.helo,
            user=self.user,
            transactions=self.transactions,
            delivered=self.delivered,
            bytes_in=self.bytes_in,
            end=self.end,
            duration=round(now - self.started, 6),
            **self.extra,
        )
