"""Tests for L{relaygate.login.phase}: the IMAP/POP3 front's phases, fed without a transport."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaygate.login.phase import Event, InvalidTransition, LoginPhase, PhaseMachine


def run(*events: Event) -> PhaseMachine:
    """A machine that has been fed C{events} in order."""
    machine = PhaseMachine()
    for event in events:
        machine.feed(event)
    return machine


class PhaseMachineTests(SynchronousTestCase):
    """Each input moves the session along the table; anything else is refused."""

    def test_starts_reading(self) -> None:
        """A new session reads commands."""
        self.assertIs(PhaseMachine().phase, LoginPhase.READING)

    def test_login_then_splice(self) -> None:
        """A login works with the router and backend, then relays."""
        machine = run(Event.LOGIN_STARTED)
        self.assertIs(machine.phase, LoginPhase.WORKING)
        self.assertIs(machine.feed(Event.LOGGED_IN), LoginPhase.WORKING)
        self.assertIs(machine.phase, LoginPhase.SPLICED)

    def test_failed_login_reads_again(self) -> None:
        """A refused login goes back to reading commands, and may start another."""
        machine = run(Event.LOGIN_STARTED, Event.LOGIN_FAILED)
        self.assertIs(machine.phase, LoginPhase.READING)
        machine.feed(Event.LOGIN_STARTED)
        self.assertIs(machine.phase, LoginPhase.WORKING)

    def test_starttls_handshake_then_reading(self) -> None:
        """STARTTLS (or an implicit-TLS connect) reads nothing until the handshake is done."""
        machine = run(Event.TLS_STARTED)
        self.assertIs(machine.phase, LoginPhase.HANDSHAKE)
        machine.feed(Event.TLS_UP)
        self.assertIs(machine.phase, LoginPhase.READING)

    def test_close_from_every_phase(self) -> None:
        """Every phase can end, and ending twice is harmless; feed says where it was."""
        paths = {
            LoginPhase.READING: (),
            LoginPhase.HANDSHAKE: (Event.TLS_STARTED,),
            LoginPhase.WORKING: (Event.LOGIN_STARTED,),
            LoginPhase.SPLICED: (Event.LOGIN_STARTED, Event.LOGGED_IN),
            LoginPhase.CLOSED: (Event.CLOSED,),
        }
        for phase, path in paths.items():
            machine = run(*path)
            self.assertIs(machine.feed(Event.CLOSED), phase)
            self.assertIs(machine.phase, LoginPhase.CLOSED)

    def test_refused_moves(self) -> None:
        """Moves the table does not list raise and leave the phase as it was."""
        cases = [
            ((), Event.LOGGED_IN),
            ((), Event.LOGIN_FAILED),
            ((), Event.TLS_UP),
            ((Event.TLS_STARTED,), Event.LOGIN_STARTED),
            ((Event.LOGIN_STARTED,), Event.LOGIN_STARTED),
            ((Event.LOGIN_STARTED,), Event.TLS_STARTED),
            ((Event.LOGIN_STARTED, Event.LOGGED_IN), Event.LOGIN_FAILED),
            ((Event.CLOSED,), Event.LOGIN_STARTED),
            ((Event.CLOSED,), Event.TLS_UP),
        ]
        for path, event in cases:
            machine = run(*path)
            before = machine.phase
            with self.assertRaises(InvalidTransition):
                machine.feed(event)
            self.assertIs(machine.phase, before)
