"""The IMAP and POP3 fronts with TLS against real clients, openssl and a TLS-speaking Dovecot."""

from __future__ import annotations

import atexit
import imaplib
import poplib
import shutil
import ssl
import subprocess
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relaygate.addresses import HostPort
from relaygate.imap import IMAPFrontFactory
from relaygate.listeners import new_server_tls
from relaygate.pop3 import POP3FrontFactory
from relaygate.routing.router import Accept, Router
from relaygate.routing.table import TableRouter
from tests.certs import PKI, Issued, make_pki
from tests.dovecot import Dovecot, dovecot_for
from tests.fronts import (
    Gateway,
    RawClient,
    ScriptedRouter,
    config_for,
    gateway,
    start_gateway,
    tls_section,
)

_PKIS: dict[type, PKI] = {}


def class_pki(case: TestCase) -> PKI:
    """One test PKI per test class (its Dovecot outlives a test), removed when the run ends."""
    cls = type(case)
    if cls not in _PKIS:
        directory = tempfile.mkdtemp(prefix="relaygate-pki-")
        atexit.register(shutil.rmtree, directory, True)
        _PKIS[cls] = make_pki(directory)
    return _PKIS[cls]


USERS = {"alice@example.org": "secret", "bob@example.org": "hunter2"}
MESSAGE = b"From: a@example.org\r\nSubject: tls\r\n\r\nOver TLS.\r\n"


class DovecotTLSTestCase(TestCase):
    """A Dovecot speaking TLS with C{server_certificate} of the class's test PKI."""

    dovecot_ssl = "yes"

    def server_certificate(self, pki: PKI) -> Issued:
        return pki.server

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits for it
        return Deferred.fromCoroutine(self.start_dovecot())

    async def start_dovecot(self) -> None:
        self.pki = class_pki(self)
        issued = self.server_certificate(self.pki)

        def prepare(dovecot: Dovecot) -> None:
            dovecot.deliver("alice@example.org", MESSAGE)
            dovecot.deliver("bob@example.org", MESSAGE)

        self.dovecot = await dovecot_for(
            self,
            USERS,
            prepare,
            ssl=self.dovecot_ssl,
            certificate=issued.certificate,
            key=issued.key,
        )

    async def gateway(
        self,
        protocol: str,
        tls: str = "none",
        backend_port: int = 0,
        router: Router | None = None,
        verify_client: str = "off",
        **section: Any,
    ) -> Gateway:
        """A gateway listener for C{protocol} with TLS mode C{tls}, routed to this Dovecot."""
        from twisted.internet import reactor

        port = backend_port or (
            self.dovecot.imap_port if protocol == "imap" else self.dovecot.pop3_port
        )
        sections: dict[str, Any] = {
            "listen": [{"protocol": protocol, "address": "127.0.0.1:1143", "tls": tls}],
            "tls": tls_section(self.pki, verify_client=verify_client),
            protocol: section,
        }
        auth_url = "http://127.0.0.1:1/auth" if router is not None else ""
        config = config_for(port, auth_url, **sections)
        if router is None:
            router = TableRouter(config.routes)
        factory: Factory
        server_tls = new_server_tls(config.listen[0], config)
        if protocol == "imap":
            factory = IMAPFrontFactory(
                config, config.listen[0], router, gateway(reactor), server_tls=server_tls
            )
        else:
            factory = POP3FrontFactory(
                config, config.listen[0], router, gateway(reactor), server_tls=server_tls
            )
        implicit = server_tls if tls == "implicit" else None
        return await start_gateway(self, factory, implicit)

    def client_context(self, certificate: Issued | None = None) -> ssl.SSLContext:
        """What a careful client uses: the test CA, host name checks, optionally a certificate."""
        context = ssl.create_default_context(cafile=self.pki.ca.certificate)
        if certificate is not None:
            context.load_cert_chain(certificate.certificate, certificate.key)
        return context

    async def login_line(self, user: str, start: int) -> str:
        """Dovecot's log line for C{user}'s login, logged after index C{start}."""
        return await deferToThread(self.dovecot.wait_for_log, f"Login: user=<{user}>", 30.0, start)

    async def s_client(self, port: int, starttls: str, commands: bytes) -> str:
        """Send C{commands} through C{openssl s_client -starttls}; return what it printed."""
        command = [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", starttls,
            "-CAfile", self.pki.ca.certificate, "-verify_hostname", "localhost",
            "-verify_return_error", "-crlf", "-ign_eof",
        ]  # fmt: skip
        result = await deferToThread(
            subprocess.run, command, input=commands, capture_output=True, timeout=60
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        self.assertEqual(result.returncode, 0, output)
        return output


class DovecotIMAPTLSTests(DovecotTLSTestCase):
    """IMAP through the gateway with TLS on either leg, against Dovecot with C{ssl = yes}."""

    async def test_imaplib_starttls(self) -> None:
        """imaplib's C{starttls()}, then LOGIN and FETCH; the router sees the TLS facts."""
        gateway = await self.gateway("imap", "starttls-required")

        def session() -> tuple[Any, ...]:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                before = client.capabilities
                client.starttls(self.client_context())
                after = client.capabilities
                client.login("alice@example.org", "secret")
                client.select("INBOX")
                _, data = client.fetch("1", "(BODY.PEEK[])")
                client.logout()
                fetched = data[0]
                assert isinstance(fetched, tuple)
                return before, after, fetched[1]

        before, after, fetched = await deferToThread(session)
        self.assertIn("LOGINDISABLED", before)
        self.assertNotIn("LOGINDISABLED", after)
        self.assertNotIn("STARTTLS", after)
        self.assertEqual(fetched, MESSAGE)
        await gateway.all_ended()
        [event] = gateway.events
        self.assertTrue(event["tls"].startswith("TLSv1.3 "), event["tls"])
        self.assertEqual(event["backend_tls"], "")

    async def test_imap4_ssl_implicit(self) -> None:
        """C{IMAP4_SSL} against an implicit-TLS listener."""
        gateway = await self.gateway("imap", "implicit")

        def session() -> str:
            with imaplib.IMAP4_SSL(
                "127.0.0.1", gateway.port, ssl_context=self.client_context(), timeout=30
            ) as client:
                client.login("alice@example.org", "secret")
                typ, _ = client.select("INBOX")
                client.logout()
                return str(typ)

        self.assertEqual(await deferToThread(session), "OK")

    async def test_client_certificate_through_starttls(self) -> None:
        """A client certificate over STARTTLS reaches the router, and EXTERNAL logs in."""
        router = ScriptedRouter()
        router.answer = lambda r: Accept(
            (HostPort("127.0.0.1", self.dovecot.imap_port),),
            user=b"bob@example.org",
            password=b"hunter2",
        )
        gateway = await self.gateway(
            "imap", "starttls", router=router, verify_client="optional", auth=["external"]
        )

        def session() -> tuple[Any, ...]:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                client.starttls(self.client_context(self.pki.client))
                caps = client.capabilities
                typ, _ = client.authenticate("EXTERNAL", lambda challenge: b"")
                client.logout()
                return caps, typ

        caps, typ = await deferToThread(session)
        self.assertIn("AUTH=EXTERNAL", caps)
        self.assertEqual(typ, "OK")
        [request] = router.requests
        assert request.tls is not None
        self.assertEqual((request.method, request.tls.verify), ("external", "SUCCESS"))

    async def test_openssl_s_client_starttls_imap(self) -> None:
        """C{openssl s_client -starttls imap} verifies the gateway and gets TLS capabilities."""
        gateway = await self.gateway("imap", "starttls-required")
        output = await self.s_client(gateway.port, "imap", b"a CAPABILITY\nb LOGOUT\n")
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN\r", output)
        self.assertIn("b OK completed", output)

    async def test_backend_required(self) -> None:
        """C{backend_tls = "required"}: Dovecot logs the login as over TLS."""
        gateway = await self.gateway(
            "imap", backend_tls="required", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.imaplib_login(gateway, "alice@example.org", "secret")
        line = await self.login_line("alice@example.org", start)
        self.assertIn(", TLS", line)
        await gateway.all_ended()
        [event] = gateway.events
        self.assertTrue(event["backend_tls"].endswith(" verified"), event["backend_tls"])

    async def test_backend_opportunistic(self) -> None:
        """C{backend_tls = "opportunistic"} takes Dovecot's STARTTLS."""
        gateway = await self.gateway(
            "imap", backend_tls="opportunistic", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.imaplib_login(gateway, "bob@example.org", "hunter2")
        self.assertIn(", TLS", await self.login_line("bob@example.org", start))

    async def test_backend_implicit(self) -> None:
        """C{backend_tls = "implicit"} connects to Dovecot's imaps port with TLS."""
        gateway = await self.gateway(
            "imap",
            backend_port=self.dovecot.imaps_port,
            backend_tls="implicit",
            backend_ca=self.pki.ca.certificate,
        )
        start = len(self.dovecot.log)
        await self.imaplib_login(gateway, "alice@example.org", "secret")
        self.assertIn(", TLS", await self.login_line("alice@example.org", start))

    async def imaplib_login(self, gateway: Gateway, user: str, password: str) -> None:
        def session() -> str:
            with imaplib.IMAP4("127.0.0.1", gateway.port, timeout=30) as client:
                typ, _ = client.login(user, password)
                client.logout()
                return str(typ)

        self.assertEqual(await deferToThread(session), "OK")


class DovecotPOP3TLSTests(DovecotTLSTestCase):
    """POP3 through the gateway with TLS on either leg, against Dovecot with C{ssl = yes}."""

    async def test_poplib_stls(self) -> None:
        """poplib's C{stls()}, then USER/PASS and RETR."""
        gateway = await self.gateway("pop3", "starttls-required")

        def session() -> tuple[Any, ...]:
            client = poplib.POP3("127.0.0.1", gateway.port, timeout=30)
            try:
                before = client.capa()
                client.stls(self.client_context())
                after = client.capa()
                client.user("alice@example.org")
                client.pass_("secret")
                _, lines, _ = client.retr(1)
                return before, after, lines
            finally:
                client.quit()

        before, after, lines = await deferToThread(session)
        self.assertEqual(set(before) & {"STLS", "USER"}, {"STLS"})
        self.assertIn("USER", after)
        self.assertNotIn("STLS", after)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", MESSAGE)

    async def test_pop3_ssl_implicit(self) -> None:
        """C{POP3_SSL} against an implicit-TLS listener."""
        gateway = await self.gateway("pop3", "implicit")

        def session() -> bytes:
            client = poplib.POP3_SSL(
                "127.0.0.1", gateway.port, context=self.client_context(), timeout=30
            )
            try:
                client.user("alice@example.org")
                return client.pass_("secret")
            finally:
                client.quit()

        self.assertTrue((await deferToThread(session)).startswith(b"+OK"))

    async def test_openssl_s_client_starttls_pop3(self) -> None:
        """C{openssl s_client -starttls pop3} verifies the gateway; CAPA then lacks STLS."""
        gateway = await self.gateway("pop3", "starttls")
        output = await self.s_client(gateway.port, "pop3", b"CAPA\nQUIT\n")
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertIn("USER\r\nSASL PLAIN LOGIN\r\n.\r", output)

    async def test_backend_required(self) -> None:
        """C{backend_tls = "required"}: STLS to Dovecot, which logs the login as over TLS."""
        gateway = await self.gateway(
            "pop3", backend_tls="required", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.poplib_login(gateway, "alice@example.org", "secret")
        self.assertIn(", TLS", await self.login_line("alice@example.org", start))

    async def test_backend_opportunistic(self) -> None:
        """C{backend_tls = "opportunistic"}: CAPA lists STLS, so it is used."""
        gateway = await self.gateway(
            "pop3", backend_tls="opportunistic", backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)
        await self.poplib_login(gateway, "bob@example.org", "hunter2")
        self.assertIn(", TLS", await self.login_line("bob@example.org", start))

    async def test_backend_implicit(self) -> None:
        """C{backend_tls = "implicit"} connects to Dovecot's pop3s port."""
        gateway = await self.gateway(
            "pop3",
            backend_port=self.dovecot.pop3s_port,
            backend_tls="implicit",
            backend_ca=self.pki.ca.certificate,
        )
        start = len(self.dovecot.log)
        await self.poplib_login(gateway, "alice@example.org", "secret")
        self.assertIn(", TLS", await self.login_line("alice@example.org", start))

    async def poplib_login(self, gateway: Gateway, user: str, password: str) -> None:
        def session() -> bytes:
            client = poplib.POP3("127.0.0.1", gateway.port, timeout=30)
            try:
                client.user(user)
                return client.pass_(password)
            finally:
                client.quit()

        self.assertTrue((await deferToThread(session)).startswith(b"+OK"))


class RefusedBackendTLSMixin:
    """Backend TLS that cannot be set up: the client gets nginx's internal error, Dovecot
    sees no login (its log says the connection ended without an auth attempt)."""

    dovecot: Dovecot
    pki: PKI

    async def refused(self, protocol: str, mode: str) -> None:
        assert isinstance(self, DovecotTLSTestCase)
        gateway = await self.gateway(
            protocol, backend_tls=mode, backend_ca=self.pki.ca.certificate
        )
        start = len(self.dovecot.log)

        def session() -> list[bytes]:
            client = RawClient(gateway.port)
            try:
                client.line()
                if protocol == "imap":
                    client.send(b"a LOGIN alice@example.org secret\r\n")
                else:
                    client.send(b"USER alice@example.org\r\nPASS secret\r\n")
                    client.line()
                return [client.line(), client.line()]
            finally:
                client.close()

        answer, end = await deferToThread(session)
        if protocol == "imap":
            self.assertEqual(answer, b"* BAD internal server error\r\n")
        else:
            self.assertEqual(answer, b"-ERR internal server error\r\n")
        self.assertEqual(end, b"")
        await gateway.all_ended()
        self.assertEqual(gateway.events[0]["outcome"], "internal error")
        await deferToThread(self.dovecot.wait_for_log, "Disconnected", 30.0, start)
        self.assertEqual([line for line in self.dovecot.log[start:] if "Login:" in line], [])


class DovecotWithoutTLSTests(RefusedBackendTLSMixin, DovecotTLSTestCase):
    """C{backend_tls = "required"} against a Dovecot with C{ssl = no}."""

    dovecot_ssl = "no"

    async def test_imap_required_not_offered(self) -> None:
        """IMAP: no STARTTLS offered, so no login is attempted."""
        await self.refused("imap", "required")

    async def test_pop3_required_not_offered(self) -> None:
        """POP3: STLS refused, so no login is attempted."""
        await self.refused("pop3", "required")


class DovecotWrongNameTests(RefusedBackendTLSMixin, DovecotTLSTestCase):
    """A backend whose certificate is not for its address is refused, even opportunistically."""

    def server_certificate(self, pki: PKI) -> Issued:
        return pki.wrong_name

    async def test_imap_wrong_name(self) -> None:
        """IMAP STARTTLS to a wrong-name certificate fails the login."""
        await self.refused("imap", "opportunistic")

    async def test_pop3_wrong_name(self) -> None:
        """POP3 STLS to a wrong-name certificate fails the login."""
        await self.refused("pop3", "required")
