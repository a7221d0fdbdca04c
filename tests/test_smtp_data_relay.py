"""Unit tests for L{relaygate.smtp.data_relay} through the front: the body at the backend, the
final reply, refused bodies cut off, backpressure."""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaygate.connect import DEFAULT_READ_SIZE, RELAY_BUFFER_SIZE
from relaygate.smtp import data_relay, front
from tests.smtp_harness import BackendEnd, FrontHarness, make_config


class DataRelayTests(SynchronousTestCase):
    """DATA: the body reaches the backend unchanged, and the final reply is the backend's."""

    def test_message_relayed_and_final_reply_is_the_backends(self) -> None:
        """The body goes to the backend as sent; the dot's reply is the backend's."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        self.assertEqual(backend.received(), b"DATA\r\n")
        backend.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self.assertEqual(h.replies(), b"354 End data with <CR><LF>.<CR><LF>\r\n")
        h.send(b"Subject: hi\r\n\r\n..dot\r\n")
        h.send(b"end\r\n.\r\n")
        self.assertEqual(backend.received(), b"Subject: hi\r\n\r\n..dot\r\nend\r\n.\r\n")
        self.assertEqual(h.replies(), b"")
        backend.reply(b"250 2.0.0 Ok: queued as ABC\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 Ok: queued as ABC\r\n")

    def test_large_reads_only_for_the_body(self) -> None:
        """The client is read 256 KiB at a time from the backend's 354 to the dot, and with
        Twisted's 64 KiB reads before and after (each read allocates its whole size)."""
        sizes: list[tuple[object, int]] = []
        self.patch(front, "set_read_size", lambda transport, size: sizes.append((transport, size)))
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        self.assertEqual(sizes, [])
        backend.reply(b"354 go\r\n")
        self.assertEqual(sizes, [(h.client, RELAY_BUFFER_SIZE)])
        h.send(b"body\r\n.\r\nNOOP\r\n")
        self.assertEqual(sizes, [(h.client, RELAY_BUFFER_SIZE), (h.client, DEFAULT_READ_SIZE)])

    def at_body(self) -> tuple[FrontHarness, BackendEnd, list[object]]:
        """A session at its first message's body (the backend's 354 relayed), and the
        transports L{data_relay.ack_promptly} is called with from then on."""
        calls: list[object] = []
        self.patch(data_relay, "ack_promptly", calls.append)
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        return h, backend, calls

    def test_acks_promptly_once_the_body_starts(self) -> None:
        """The client's socket leaves delayed-ACK mode at each message's first body bytes (the
        354 is out by then, and nothing is sent until the dot's reply), once per message, when
        more of the body is to come."""
        h, backend, calls = self.at_body()
        self.assertEqual(calls, [])
        h.send(b"Subject: one\r\n")
        self.assertEqual(calls, [h.client])
        h.send(b"\r\nbody\r\n")
        h.send(b".\r\n")
        backend.reply(b"250 2.0.0 Ok\r\n")
        self.assertEqual(calls, [h.client])
        h.send(b"MAIL FROM:<from@example.net>\r\nRCPT TO:<rcpt@example.org>\r\nDATA\r\n")
        backend.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        self.assertEqual(calls, [h.client])
        h.send(b"two\r\n")
        self.assertEqual(calls, [h.client, h.client])
        h.send(b".\r\n")
        self.assertIn(b"two\r\n.\r\n", backend.received())

    def test_no_prompt_ack_for_a_body_whole_in_one_read(self) -> None:
        """A small message whose first read already holds its final dot asks nothing of the
        socket: nothing more is coming to acknowledge."""
        h, backend, calls = self.at_body()
        h.send(b"Subject: small\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(calls, [])
        self.assertIn(b"body\r\n.\r\n", backend.received())

    def test_backend_final_refusal(self) -> None:
        """A backend 554 after the dot is the client's reply; never a 2xx."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"spam\r\n.\r\n")
        backend.reply(b"554 5.7.1 Spam\r\n")
        self.assertEqual(h.replies(), b"554 5.7.1 Spam\r\n")

    def test_backend_lost_after_dot(self) -> None:
        """The backend closing before its final reply gives 451 4.4.2."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"body\r\n.\r\n")
        backend.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(
            h.replies(), b"451 4.4.2 Lost the connection to the mail server, try again later\r\n"
        )

    def test_backend_lost_mid_data(self) -> None:
        """The backend closing mid-message: the client's dot gets 451 4.4.2."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"part one\r\n")
        backend.protocol.connectionLost(Failure(ConnectionLost()))
        h.send(b"part two\r\n.\r\n")
        self.assertEqual(
            h.replies(), b"451 4.4.2 Lost the connection to the mail server, try again later\r\n"
        )

    def test_backend_reply_timeout(self) -> None:
        """No reply to the dot within backend_timeout: 451, connection dropped."""
        h = FrontHarness(make_config(backend_timeout=60.0))
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"body\r\n.\r\n")
        h.reactor.advance(60)
        self.assertEqual(
            h.replies(), b"451 4.4.2 Lost the connection to the mail server, try again later\r\n"
        )
        self.assertTrue(backend.transport.disconnecting)

    def test_bare_lf_refused_and_backend_aborted(self) -> None:
        """A smuggling attempt: 550 5.6.11, the backend is cut off before any end-of-data."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        backend.received()
        h.replies()
        h.send(b"hello\r\n")
        h.send(b"x\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nevil\r\n.\r\n")
        self.assertEqual(backend.received(), b"hello\r\n")
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(
            h.replies(), b"550 5.6.11 Message refused: bare CR or LF in the message body\r\n"
        )

    def test_body_too_big(self) -> None:
        """A body over max_message_size: 552 5.3.4, backend cut off, nothing delivered."""
        h = FrontHarness(make_config(max_message_size=100))
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        backend.received()
        h.replies()
        h.send(b"x" * 98 + b"\r\n")
        h.send(b"y" * 10 + b"\r\n.\r\n")
        self.assertNotIn(b".\r\n", backend.received()[-3:])
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(h.replies(), b"552 5.3.4 Message size exceeds fixed limit\r\n")

    def test_backpressure_pauses_client(self) -> None:
        """While the backend's buffer is full the client's transport is paused."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        producer = backend.transport.producer
        assert producer is not None
        producer.pauseProducing()
        self.assertEqual(h.client.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(h.client.producerState, "producing")
        h.send(b".\r\n")
        self.assertIsNone(backend.transport.producer)

    def test_pipelined_commands_after_dot(self) -> None:
        """Commands sent right after the dot wait for the final reply, then run."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        h.replies()
        h.send(b"body\r\n.\r\nNOOP\r\n")
        self.assertEqual(h.replies(), b"")
        backend.reply(b"250 2.0.0 queued\r\n")
        self.assertEqual(h.replies(), b"250 2.0.0 queued\r\n250 2.0.0 Ok\r\n")

    def test_client_gone_mid_data_delivers_nothing(self) -> None:
        """A client lost before its dot: the backend is cut off, no end-of-data sent."""
        h = FrontHarness()
        backend = h.open_transaction()
        h.send(b"DATA\r\n")
        backend.reply(b"354 go\r\n")
        backend.received()
        h.send(b"partial\r\n")
        h.front.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(backend.received(), b"partial\r\n")
        self.assertTrue(backend.transport.disconnecting)
