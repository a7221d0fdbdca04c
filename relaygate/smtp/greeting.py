"""nginx's C{smtp_greeting_delay}: hold the 220 back, and refuse a client that talks first.

Spam engines send their commands without waiting for the greeting; a real client waits.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from relaygate.smtp.replies import Reply

R_EARLY_TALKER = Reply(554, (b"5.5.0 Error: improper use of SMTP command pipelining",))


class GreetingDelay:
    """Calls C{greet} C{delay} seconds after L{start}, unless L{stop} comes first."""

    def __init__(self, clock: IReactorTime, delay: float, greet: Callable[[], None]) -> None:
        self._clock = clock
        self.delay = delay
        self._greet = greet
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Start holding the greeting back."""
        self._call = self._clock.callLater(self.delay, self._fire)

    def stop(self) -> None:
        """The client talked first, or left: no greeting."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def release(self) -> None:
        """The session is over: stop, and let go of the front's C{greet} (it refers back)."""
        self.stop()
        self._greet = _no_greeting

    def _fire(self) -> None:
        self._call = None
        self._greet()


def _no_greeting() -> None:
    """A released delay's greeting: there is no session to greet any more."""
