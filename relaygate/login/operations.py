"""The IMAP and POP3 fronts' part in operations (docs/operations.md): the sessions view.

A mixin of L{relaygate.login.front.LoginFront}. A kick and the drain's deadline use the
operations wrapper's goodbye (C{* BYE}, C{-ERR}); a drain leaves spliced sessions running until
the deadline, so these fronts need no drain hook.
"""

from __future__ import annotations

from relaygate.login.flow import LoginFlow
from relaygate.login.phase import LoginPhase
from relaygate.text import printable

_STATES = {LoginPhase.WORKING: "login", LoginPhase.SPLICED: "spliced"}


class LoginOperations:
    """What the sessions view shows of an IMAP or POP3 session beyond its bytes."""

    # Provided by the front (annotations only, so the front's own definitions are used).
    _flow: LoginFlow

    @property
    def state(self) -> LoginPhase:
        """The front's phase (the front's own property is the one used)."""
        raise NotImplementedError

    def ops_facts(self) -> dict[str, str]:
        """The login's user, the backend, and C{login} or C{spliced}."""
        flow = self._flow
        return {
            "user": printable(flow.user) if flow.user else "",
            "backend": flow.backend_address,
            "state": _STATES.get(self.state, ""),
        }
