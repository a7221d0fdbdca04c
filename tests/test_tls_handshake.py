"""Tests for L{relaygate.tls.handshake}: the client handshake timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaygate.routing.router import ClientTLS
from relaygate.tls.handshake import HandshakeResult, HandshakeTimer


class HandshakeTimerTests(SynchronousTestCase):
    """The handshake timeout and summary every front shares."""

    def test_expires_on_the_clock(self) -> None:
        """An unfinished handshake calls C{expired} after the timeout, once."""
        clock = Clock()
        expired: list[bool] = []
        timer = HandshakeTimer(clock, 30.0, lambda: expired.append(True))
        timer.start()
        clock.advance(29.9)
        self.assertEqual(expired, [])
        clock.advance(0.1)
        self.assertEqual(expired, [True])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_finished_stops_the_timer(self) -> None:
        """A finished handshake cancels the timer; a plain transport shows no TLS facts."""
        clock = Clock()
        timer = HandshakeTimer(clock, 30.0, self.fail)
        timer.start()
        result = timer.finished(StringTransport())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual((result.info, result.problem, result.summary()), (None, None, ""))

    def test_summary(self) -> None:
        """The access log's tls field: protocol, cipher and the verify result when there is one."""
        info = ClientTLS(protocol="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", verify="SUCCESS")
        self.assertEqual(
            HandshakeResult(info, None).summary(), "TLSv1.3 TLS_AES_256_GCM_SHA384 verify=SUCCESS"
        )
        no_verify = ClientTLS(protocol="TLSv1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256", verify="")
        self.assertEqual(
            HandshakeResult(no_verify, None).summary(), "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256"
        )
