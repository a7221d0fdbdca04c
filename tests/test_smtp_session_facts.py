"""Unit tests for L{relaygate.smtp.session_facts}: the session's values and path helpers."""

from __future__ import annotations

from twisted.internet.address import IPv6Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from relaygate.observe import SessionRecord, TransactionRecord
from relaygate.smtp.session_facts import (
    ClientFacts,
    Transaction,
    bracket_path,
    path_text,
    size_param,
)


class ClientFactsTests(SynchronousTestCase):
    """What a new connection tells the session."""

    def test_learn_addresses(self) -> None:
        """Peer and local addresses and the log label come from the transport."""
        transport = StringTransport(
            peerAddress=IPv6Address("TCP", "::1", 40000),
            hostAddress=IPv6Address("TCP", "::1", 25),
        )
        facts = ClientFacts()
        facts.learn(transport)
        self.assertEqual((facts.ip, facts.port), ("::1", 40000))
        self.assertEqual((facts.local_ip, facts.local_port), ("::1", 25))
        self.assertEqual(facts.label, "::1:40000")
        self.assertIsNone(facts.proxy)

    def test_local_address_asked_once_when_needed(self) -> None:
        """The socket is asked for the local address only when it is first read, and once."""
        transport = StringTransport(hostAddress=IPv6Address("TCP", "::1", 25))
        asked: list[object] = []
        get_host = transport.getHost

        def counted() -> object:
            asked.append(1)
            return get_host()

        transport.getHost = counted  # type: ignore[method-assign,assignment]
        facts = ClientFacts()
        facts.learn(transport)
        self.assertEqual(asked, [])
        self.assertEqual((facts.local_ip, facts.local_port), ("::1", 25))
        self.assertEqual(asked, [1])


class PathTests(SynchronousTestCase):
    """MAIL and RCPT paths and parameters."""

    def test_bracket_path(self) -> None:
        """A bare address gets its angle brackets; a bracketed one is kept."""
        self.assertEqual(bracket_path(b"a@b"), b"<a@b>")
        self.assertEqual(bracket_path(b"<a@b>"), b"<a@b>")
        self.assertEqual(bracket_path(b"<>"), b"<>")

    def test_path_text(self) -> None:
        """The record shows the address without brackets, undecodable bytes escaped."""
        self.assertEqual(path_text(b"<j\xfcrgen@b>"), "j\\xfcrgen@b")

    def test_size_param(self) -> None:
        """SIZE= is read case-insensitively; a missing or junk value is None."""
        self.assertEqual(size_param(b"BODY=8BITMIME size=1000"), 1000)
        self.assertIsNone(size_param(b"SIZE=big"))
        self.assertIsNone(size_param(b""))


class TransactionTests(SynchronousTestCase):
    """A transaction's end."""

    def test_finish_counts_and_records(self) -> None:
        """finish() counts the transaction in its session and records the outcome."""
        session = SessionRecord(session_id="1", client="c", listener="l", started=0.0)
        tx = Transaction(b"MAIL FROM:<a@b>", b"<a@b>", b"", TransactionRecord(started=0.0))
        tx.finish(session, "delivered", "250 ok", 1.0)
        self.assertEqual(session.transactions, 1)
        self.assertEqual((tx.record.outcome, tx.record.final), ("delivered", "250 ok"))
