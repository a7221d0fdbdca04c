"""The SMTP front's part in operations (docs/operations.md): drain, kick, sessions view.

A mixin of L{relaygate.smtp.front.SMTPFront}, kept apart so the front stays one job: the
operations wrapper (L{relaygate.ops.wrapper}) calls C{ops_drain}, C{ops_close} and
C{ops_facts}, and C{lineReceived} here sees each command line before Twisted's dispatch.
"""

from __future__ import annotations

from collections.abc import Callable

from relaygate.observe import SessionRecord
from relaygate.smtp.backend_leg import BackendLeg
from relaygate.smtp.replies import Reply
from relaygate.smtp.session_facts import Transaction


class SMTPOperations:
    """Drain and kick in SMTP's words, and what the sessions view shows of a session."""

    draining = False
    """True once the drain began: the next command outside a transaction gets the 421."""

    # Provided by the front (annotations only, so the front's own definitions are used).
    host: bytes
    mode: str
    session: SessionRecord
    _tx: Transaction | None
    _leg: BackendLeg
    in_body: Callable[[], bool]
    _reply_and_close: Callable[[Reply], None]

    def ops_facts(self) -> dict[str, str]:
        """The user, the backend, and C{data} while a message body arrives."""
        backend = self._leg.backend
        facts = {
            "user": self.session.user,
            "backend": backend.info.address if backend is not None else "",
        }
        if self.in_body():
            facts["state"] = "data"
        return facts

    def ops_drain(self) -> None:
        """SIGTERM: an idle session gets 421 now; one in a transaction finishes it (its
        client gets the backend's reply to the final dot) and gets the 421 at its next
        command."""
        self.draining = True
        if self._tx is None:
            self.shut_down()

    def ops_close(self, reason: str) -> None:
        """An administrator's kick (C{kick}), or the drain's deadline: 421 and close."""
        if reason != "kick":
            self.shut_down()
            return
        self.session.end = "closed by the administrator"
        text = b"4.7.0 " + self.host + b" Session closed by the administrator"
        self._reply_and_close(Reply(421, (text,)))

    def lineReceived(self, line: bytes) -> None:
        """Draining: a command outside a transaction gets the 421; else the front runs it."""
        if self.draining and self._tx is None and self.mode == "COMMAND":
            self.shut_down()
            return
        # SMTP.lineReceived minus its resetTimeout: the input runner restarts the idle timer
        # once per read (and when a waiting command resumes), not again for every line.
        getattr(self, "state_" + self.mode)(line)

    def shut_down(self) -> None:
        """C{421 4.3.2 <name> Service shutting down}, and close."""
        self.session.end = "shutting down"
        self._reply_and_close(Reply(421, (b"4.3.2 " + self.host + b" Service shutting down",)))
