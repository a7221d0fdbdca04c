"""Unit tests for L{relaygate.smtp.phase}: the session's phase machine, fed inputs alone."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relaygate.smtp.phase import Phase, PhaseError, SessionPhase


def commanding() -> SessionPhase:
    """A phase machine of a session that was greeted and reads commands."""
    phase = SessionPhase()
    phase.connection_made(implicit_tls=False, delay_greeting=False)
    return phase


class ConnectionTests(SynchronousTestCase):
    """Where a session starts, and the inputs that end it."""

    def test_new_session_is_not_connected(self) -> None:
        """Before the connection nothing runs."""
        phase = SessionPhase()
        self.assertIs(phase.current, Phase.NEW)
        self.assertFalse(phase.connected)
        self.assertFalse(phase.runs_input)

    def test_plain_connection_reads_commands(self) -> None:
        """Without TLS or a greeting delay, commands run at once."""
        phase = commanding()
        self.assertIs(phase.current, Phase.COMMAND)
        self.assertTrue(phase.connected)
        self.assertTrue(phase.runs_input)

    def test_implicit_tls_waits_for_the_handshake(self) -> None:
        """Implicit TLS starts in the handshake; its end leads to commands."""
        phase = SessionPhase()
        phase.connection_made(implicit_tls=True, delay_greeting=True)
        self.assertIs(phase.current, Phase.HANDSHAKE)
        phase.tls_done()
        self.assertIs(phase.current, Phase.COMMAND)

    def test_greeting_delay(self) -> None:
        """A delayed greeting is its own phase, left when the greeting goes out."""
        phase = SessionPhase()
        phase.connection_made(implicit_tls=False, delay_greeting=True)
        self.assertIs(phase.current, Phase.GREETING)
        phase.greeted()
        self.assertIs(phase.current, Phase.COMMAND)

    def test_connected_twice_is_a_bug(self) -> None:
        """A second connection_made raises."""
        phase = commanding()
        self.assertRaises(PhaseError, phase.connection_made, False, False)

    def test_greeted_outside_the_delay_is_a_bug(self) -> None:
        """greeted() only follows a delayed greeting."""
        self.assertRaises(PhaseError, commanding().greeted)

    def test_close_then_loss(self) -> None:
        """Closing stops input but the connection is up until it is lost."""
        phase = commanding()
        phase.close()
        self.assertIs(phase.current, Phase.CLOSING)
        self.assertTrue(phase.closing)
        self.assertTrue(phase.connected)
        self.assertFalse(phase.runs_input)
        phase.close()
        self.assertIs(phase.current, Phase.CLOSING)
        phase.connection_lost()
        self.assertIs(phase.current, Phase.CLOSED)
        self.assertFalse(phase.connected)
        self.assertFalse(phase.closing)

    def test_close_after_loss_stays_closed(self) -> None:
        """A close requested after the connection is gone changes nothing."""
        phase = commanding()
        phase.connection_lost()
        phase.close()
        self.assertIs(phase.current, Phase.CLOSED)


class CommandTests(SynchronousTestCase):
    """Commands that wait on the router or backend."""

    def test_waiting_command_holds_input(self) -> None:
        """While a command waits, input does not run; its end lets it run again."""
        phase = commanding()
        phase.command_waits(final=False)
        self.assertIs(phase.current, Phase.WAITING)
        self.assertTrue(phase.waiting)
        self.assertFalse(phase.runs_input)
        self.assertFalse(phase.final_pending)
        phase.command_done()
        self.assertIs(phase.current, Phase.COMMAND)
        self.assertFalse(phase.waiting)

    def test_final_reply_survives_a_close(self) -> None:
        """A final dot's reply stays pending across a close, until it arrives."""
        phase = commanding()
        phase.command_waits(final=True)
        self.assertIs(phase.current, Phase.FINAL)
        phase.close()
        self.assertIs(phase.current, Phase.CLOSING)
        self.assertTrue(phase.final_pending)
        phase.command_done()
        self.assertIs(phase.current, Phase.CLOSING)
        self.assertFalse(phase.final_pending)

    def test_command_done_after_loss_stays_closed(self) -> None:
        """A reply arriving after the client left does not reopen input."""
        phase = commanding()
        phase.command_waits(final=False)
        phase.connection_lost()
        phase.command_done()
        self.assertIs(phase.current, Phase.CLOSED)
        self.assertFalse(phase.runs_input)

    def test_starttls(self) -> None:
        """STARTTLS moves to the handshake, and its end back to commands."""
        phase = commanding()
        phase.tls_started()
        self.assertIs(phase.current, Phase.HANDSHAKE)
        phase.tls_done()
        self.assertIs(phase.current, Phase.COMMAND)

    def test_starttls_while_waiting_is_a_bug(self) -> None:
        """STARTTLS cannot run while a command waits."""
        phase = commanding()
        phase.command_waits(final=False)
        self.assertRaises(PhaseError, phase.tls_started)

    def test_tls_done_outside_a_handshake_changes_nothing(self) -> None:
        """A stray handshake notice leaves a waiting session waiting."""
        phase = commanding()
        phase.command_waits(final=False)
        phase.tls_done()
        self.assertIs(phase.current, Phase.WAITING)
