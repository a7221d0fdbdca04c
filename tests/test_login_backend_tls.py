"""TLS from the IMAP/POP3 login to the backend (C{backend_tls}): STARTTLS/STLS as
L{relaygate.backend.negotiate} decides, in memory."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.python.failure import Failure

from relaygate.routing.router import Accept
from tests.fronts import (
    take,
)
from tests.tls_fronts import (
    BACKEND,
    TLSFrontTestCase,
    TLSStringTransport,
)


class IMAPBackendTLSTests(TLSFrontTestCase):
    """IMAP STARTTLS to the backend (C{[imap] backend_tls})."""

    def login(self, mode: str, **section: Any) -> tuple[Any, Any, TLSStringTransport]:
        """A client logged in as alice, the route accepted, the backend connected."""
        front, transport = self.front(
            "none", backend_tls=mode, backend_ca=self.pki.ca.certificate, **section
        )
        take(transport)
        self.router.answer = lambda r: Accept((BACKEND,))
        front.dataReceived(b"a LOGIN alice pw\r\n")
        backend, backend_transport = self.backend()
        self.client_transport = transport
        return front, backend, backend_transport

    def test_required_starttls_before_anything_else(self) -> None:
        """STARTTLS first; what followed its OK is dropped; CAPABILITY, ID, LOGIN over TLS."""
        _, backend, backend_transport = self.login("required")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED ID] hi\r\n")
        self.assertEqual(take(backend_transport), b"R1 STARTTLS\r\n")
        backend.dataReceived(b"R1 OK Begin TLS negotiation now.\r\nR2 OK injected\r\n")
        self.assertEqual(backend_transport.before_tls, b"")
        self.assertIsNotNone(backend_transport.tls_creator)
        self.assertEqual(take(backend_transport), b"")
        backend.handshakeCompleted()
        self.assertEqual(take(backend_transport), b"R2 CAPABILITY\r\n")
        backend.dataReceived(
            b"* CAPABILITY IMAP4rev1 ID LITERAL+ AUTH=PLAIN\r\nR2 OK Capability completed.\r\n"
        )
        self.assertTrue(take(backend_transport).startswith(b'R3 ID ("x-originating-ip"'))
        backend.dataReceived(b"R3 OK ID completed.\r\n")
        self.assertEqual(take(backend_transport), b'R4 LOGIN "alice" "pw"\r\n')
        events = [
            e for e in self.events if "after its answer to STARTTLS" in e.get("log_format", "")
        ]
        self.assertEqual(len(events), 1)

    def test_required_not_offered(self) -> None:
        """C{required} and no STARTTLS: internal error, and nothing is sent to the backend."""
        _, backend, backend_transport = self.login("required")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] hi\r\n")
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")
        self.assertTrue(backend_transport.disconnecting)
        self.assertTrue(self.client_transport.disconnecting)

    def test_required_refused(self) -> None:
        """C{required} and STARTTLS answered NO: internal error, no credentials sent."""
        _, backend, backend_transport = self.login("required")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        take(backend_transport)
        backend.dataReceived(b"R1 NO not now\r\n")
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")

    def test_handshake_failure(self) -> None:
        """A failed handshake or certificate check: internal error, even when opportunistic."""
        _, backend, backend_transport = self.login("opportunistic")
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        backend.dataReceived(b"R1 OK go\r\n")
        take(backend_transport)
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        backend.connectionLost(Failure(error))
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")

    def test_handshake_timeout(self) -> None:
        """A backend that never finishes its handshake is given up after [imap] timeout."""
        _, backend, _ = self.login("required", timeout=7.0)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        backend.dataReceived(b"R1 OK go\r\n")
        self.reactor.advance(7)
        self.assertEqual(take(self.client_transport), b"* BAD internal server error\r\n")

    def test_opportunistic_without_starttls_stays_plain(self) -> None:
        """C{opportunistic} and no STARTTLS offered: the login goes on in plaintext."""
        _, backend, backend_transport = self.login("opportunistic", send_id=False)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" "pw"\r\n')
        self.assertIsNone(backend_transport.tls_creator)

    def test_route_overrides_section(self) -> None:
        """A route's own C{backend_tls} wins over C{[imap] backend_tls}."""
        front, transport = self.front("none", backend_ca=self.pki.ca.certificate)
        take(transport)
        self.router.answer = lambda r: Accept((BACKEND,), backend_tls="required")
        front.dataReceived(b"a LOGIN alice pw\r\n")
        backend, backend_transport = self.backend()
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        self.assertEqual(take(backend_transport), b"R1 STARTTLS\r\n")

    def test_none_ignores_starttls(self) -> None:
        """C{none}: a backend's STARTTLS offer is not taken up."""
        _, backend, backend_transport = self.login("none", send_id=False)
        backend.dataReceived(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        self.assertEqual(take(backend_transport), b'R1 LOGIN "alice" "pw"\r\n')


class POP3BackendTLSTests(TLSFrontTestCase):
    """POP3 STLS to the backend (C{[pop3] backend_tls})."""

    protocol = "pop3"

    def login(self, mode: str) -> tuple[Any, TLSStringTransport]:
        front, transport = self.front("none", backend_tls=mode)
        take(transport)
        self.router.answer = lambda r: Accept((BACKEND,))
        front.dataReceived(b"USER alice\r\nPASS pw\r\n")
        self.assertEqual(take(transport), b"+OK\r\n")
        self.client_transport = transport
        return self.backend()

    def test_required_sends_stls_first(self) -> None:
        """C{required}: STLS right after the greeting; bytes after its +OK are dropped."""
        backend, backend_transport = self.login("required")
        backend.dataReceived(b"+OK [XCLIENT] Dovecot ready.\r\n")
        self.assertEqual(take(backend_transport), b"STLS\r\n")
        backend.dataReceived(b"+OK Begin TLS negotiation now.\r\n+OK injected\r\n")
        self.assertIsNotNone(backend_transport.tls_creator)
        self.assertEqual(take(backend_transport), b"")
        backend.handshakeCompleted()
        self.assertEqual(take(backend_transport), b"XCLIENT ADDR=192.0.2.7 PORT=40000\r\n")
        backend.dataReceived(b"+OK\r\n")
        self.assertEqual(take(backend_transport), b"USER alice\r\n")

    def test_required_refused(self) -> None:
        """C{required} and STLS refused: C{-ERR internal server error}, no USER sent."""
        backend, backend_transport = self.login("required")
        backend.dataReceived(b"+OK ready.\r\n")
        take(backend_transport)
        backend.dataReceived(b"-ERR Unknown command.\r\n")
        self.assertEqual(take(backend_transport), b"")
        self.assertEqual(take(self.client_transport), b"-ERR internal server error\r\n")

    def test_opportunistic_asks_capa(self) -> None:
        """C{opportunistic}: CAPA first; STLS only when listed."""
        backend, backend_transport = self.login("opportunistic")
        backend.dataReceived(b"+OK ready.\r\n")
        self.assertEqual(take(backend_transport), b"CAPA\r\n")
        backend.dataReceived(b"+OK\r\nTOP\r\nUSER\r\n.\r\n")
        self.assertEqual(take(backend_transport), b"USER alice\r\n")
        self.assertIsNone(backend_transport.tls_creator)

    def test_opportunistic_uses_offered_stls(self) -> None:
        """C{opportunistic} with STLS listed: STLS, then the login over TLS."""
        backend, backend_transport = self.login("opportunistic")
        backend.dataReceived(b"+OK ready.\r\n")
        backend.dataReceived(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n")
        self.assertEqual(take(backend_transport), b"CAPA\r\nSTLS\r\n")
        backend.dataReceived(b"+OK\r\n")
        self.assertIsNotNone(backend_transport.tls_creator)
        backend.handshakeCompleted()
        self.assertEqual(take(backend_transport), b"USER alice\r\n")
