"""The phase of one SMTP front session, and the one place where it changes.

The front used to keep its phase in a handful of flags (connected, TLS starting, a command
pending, awaiting the final reply, closing); together they allowed combinations that cannot
happen. L{SessionPhase} holds one L{Phase} and changes it only through its input methods, each
of which says which phases it may come from. It does no I/O, so its tests feed it inputs alone.

A plain enum rather than an automat machine: the table is small, and the front asks for the
phase on every read (the benchmark decides; see the module's tests and the change's notes).
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    """Where a session is; the front's input loop runs commands only in L{COMMAND}."""

    NEW = "new"
    """Not connected yet."""
    HANDSHAKE = "handshake"
    """A client TLS handshake is running (implicit TLS, or after STARTTLS)."""
    GREETING = "greeting"
    """The greeting is held back (C{greeting_delay}); input now is early talk."""
    COMMAND = "command"
    """Reading and running commands."""
    WAITING = "waiting"
    """A command waits on the router or the backend; later input queues behind it."""
    FINAL = "final"
    """The final dot waits on the backend: a close does not cancel it (the message is out)."""
    CLOSING = "closing"
    """The gateway is closing the connection; no more input runs."""
    CLOSED = "closed"
    """The connection is gone."""


class PhaseError(Exception):
    """An input arrived in a phase where it cannot happen (a bug in the caller)."""


class SessionPhase:
    """One session's phase, changed only through L{_move}, by the input methods below.

    C{final_pending} stays set while the reply to a final dot is awaited, even when the
    session starts closing meanwhile: that reply still ends the transaction.

    The front asks C{connected}, C{runs_input}, C{waiting} and C{closing} several times per
    command; L{_move} computes them once per change (comparing enum members by identity: an
    enum's hash is a Python-level call, and the benchmark showed it).
    """

    def __init__(self) -> None:
        self.current = Phase.NEW
        self.final_pending = False
        self.connected = False
        """True from the connection until it is lost (closing included)."""
        self.runs_input = False
        """True when buffered input may run now: no command waits and no close was decided."""
        self.waiting = False
        """True while the gateway (router or backend), not the client, is awaited."""
        self.closing = False
        """True once the gateway has decided to close and the connection is not yet gone."""

    def _move(self, to: Phase, *allowed: Phase) -> None:
        """The one place the phase changes: to C{to}, from one of C{allowed} (any if none)."""
        if allowed and self.current not in allowed:
            raise PhaseError(f"{to.name} from {self.current.name}")
        self.current = to
        self.connected = to is not Phase.NEW and to is not Phase.CLOSED
        self.runs_input = to is Phase.COMMAND or to is Phase.HANDSHAKE or to is Phase.GREETING
        self.waiting = to is Phase.WAITING or to is Phase.FINAL
        self.closing = to is Phase.CLOSING

    def connection_made(self, implicit_tls: bool, delay_greeting: bool) -> None:
        """Connected: implicit TLS waits for the handshake, else the greeting (maybe delayed)."""
        if implicit_tls:
            self._move(Phase.HANDSHAKE, Phase.NEW)
        elif delay_greeting:
            self._move(Phase.GREETING, Phase.NEW)
        else:
            self._move(Phase.COMMAND, Phase.NEW)

    def greeted(self) -> None:
        """The delayed greeting went out."""
        self._move(Phase.COMMAND, Phase.GREETING)

    def tls_started(self) -> None:
        """STARTTLS was accepted: the handshake runs."""
        self._move(Phase.HANDSHAKE, Phase.COMMAND)

    def tls_done(self) -> None:
        """The handshake finished (the certificate verdict is the front's business)."""
        if self.current is Phase.HANDSHAKE:
            self._move(Phase.COMMAND)

    def command_waits(self, final: bool) -> None:
        """A command waits on the router or backend (C{final}: the reply to the dot)."""
        self.final_pending = final
        if self.runs_input:
            self._move(Phase.FINAL if final else Phase.WAITING)

    def command_done(self) -> None:
        """The waiting command has its reply: input runs again, unless the session ends."""
        self.final_pending = False
        if self.waiting:
            self._move(Phase.COMMAND)

    def close(self) -> None:
        """The gateway closes the connection (a second request changes nothing)."""
        if self.current is not Phase.CLOSED:
            self._move(Phase.CLOSING)

    def connection_lost(self) -> None:
        """The connection is gone."""
        self._move(Phase.CLOSED)
