"""The phases of an IMAP or POP3 front session, and the only way from one to the next.

A front starts L{LoginPhase.READING} (or goes straight to L{LoginPhase.HANDSHAKE} on an
implicit-TLS listener), reads pre-auth commands until a login starts (L{LoginPhase.WORKING}:
router and backend), and either goes back to reading after a refusal or relays
(L{LoginPhase.SPLICED}); any phase can end (L{LoginPhase.CLOSED}). L{PhaseMachine.feed} is the
one place the phase changes: it refuses a move the table does not list, so a bug shows as an
error instead of a session in two phases.
"""

from __future__ import annotations

import enum
from typing import Final


class LoginPhase(enum.Enum):
    """Where a front is."""

    HANDSHAKE = "handshake"
    """A TLS handshake with the client is under way: nothing is read."""
    READING = "reading"
    """Reading and answering pre-auth commands."""
    WORKING = "working"
    """A login is with the router or the backend: input is buffered, not read."""
    SPLICED = "spliced"
    """Logged in: the splice relays both ways."""
    CLOSED = "closed"
    """The session is over (or closing): nothing more is read or sent."""


class Event(enum.Enum):
    """What moves a front from one phase to the next."""

    TLS_STARTED = "tls started"
    TLS_UP = "tls up"
    LOGIN_STARTED = "login started"
    LOGIN_FAILED = "login failed"
    LOGGED_IN = "logged in"
    CLOSED = "closed"


_TRANSITIONS: Final[dict[tuple[LoginPhase, Event], LoginPhase]] = {
    (LoginPhase.READING, Event.TLS_STARTED): LoginPhase.HANDSHAKE,
    (LoginPhase.HANDSHAKE, Event.TLS_UP): LoginPhase.READING,
    (LoginPhase.READING, Event.LOGIN_STARTED): LoginPhase.WORKING,
    (LoginPhase.WORKING, Event.LOGIN_FAILED): LoginPhase.READING,
    (LoginPhase.WORKING, Event.LOGGED_IN): LoginPhase.SPLICED,
    **{(phase, Event.CLOSED): LoginPhase.CLOSED for phase in LoginPhase},
}


class InvalidTransition(Exception):
    """An event that the current phase does not allow (a bug in the front)."""


class PhaseMachine:
    """The current phase, changed only by L{feed}."""

    def __init__(self) -> None:
        self.phase = LoginPhase.READING

    def feed(self, event: Event) -> LoginPhase:
        """Move on for C{event}; return the phase the session was in before.

        @raise InvalidTransition: when C{event} cannot happen in the current phase.
        """
        previous = self.phase
        following = _TRANSITIONS.get((previous, event))
        if following is None:
            raise InvalidTransition(f"{event.value} while {previous.value}")
        self.phase = following
        return previous
