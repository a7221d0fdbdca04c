"""A closed SMTP session is freed by reference counts, not left to the cyclic collector.

The front's helpers (input runner, client TLS gate, greeting delay) refer back to it; the
front lets go of those links when the session is over (docs/performance.md, "The third
round"). With the collector off, a session that is over must be gone as soon as nothing
outside it refers to it.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.smtp.front import SMTPFront
from tests.smtp_harness import BackendEnd, FrontHarness, make_config


@contextmanager
def collector_off() -> Iterator[None]:
    """Only reference counts free objects inside the block."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def up_to_the_dot() -> tuple[FrontHarness, BackendEnd]:
    """A session whose message has been sent, final dot included, with no reply yet."""
    h = FrontHarness()
    backend = h.open_transaction()
    h.send(b"DATA\r\n")
    backend.reply(b"354 go ahead\r\n")
    h.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    return h, backend


class ReleaseTests(SynchronousTestCase):
    """Once over, the session's objects go with their last reference."""

    def test_closed_session_is_freed(self) -> None:
        """A whole message, QUIT and the close: the front is freed with the harness."""
        with collector_off():
            h, backend = up_to_the_dot()
            backend.reply(b"250 2.0.0 queued\r\n")
            h.send(b"QUIT\r\n")
            self.assertIn(b"221 ", h.replies())
            h.front.connectionLost(Failure(ConnectionDone()))
            front = weakref.ref(h.front)
            del h, backend
            self.assertIsNone(front())

    def test_delayed_greeting_session_is_freed(self) -> None:
        """A client that leaves while its greeting is held back: freed too."""
        with collector_off():
            h = FrontHarness(make_config(greeting_delay=5.0))
            h.front.connectionLost(Failure(ConnectionLost()))
            front: weakref.ref[SMTPFront] = weakref.ref(h.front)
            del h
            self.assertIsNone(front())

    def test_final_reply_after_the_client_left(self) -> None:
        """The client leaves after its final dot: the front waits for the backend's reply,
        records it, and only then is freed."""
        with collector_off():
            h, backend = up_to_the_dot()
            h.front.connectionLost(Failure(ConnectionLost()))
            front = weakref.ref(h.front)
            recorded = h.front.session
            backend.reply(b"250 2.0.0 queued\r\n")
            self.assertEqual(recorded.delivered, 1)
            del h, backend
            self.assertIsNone(front())
