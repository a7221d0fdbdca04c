"""Unit tests for SMTP submission (L{relaygate.smtp.submission}): AUTH exchanges,
the router's answers and what the backend learns, through the front and on its own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relaygate.addresses import HostPort
from relaygate.config.load import parse
from relaygate.routing.router import Accept, ClientTLS, Decision, Refuse, RouterUnavailable
from relaygate.sasl import Credentials, SASLExchange, parse_auth_command
from relaygate.smtp.auth_replies import (
    R_AUTH_CANCELLED,
    R_AUTH_IN_TRANSACTION,
    R_AUTH_NEED_EHLO,
    R_AUTH_OK,
    R_AUTH_TOO_LONG,
)
from relaygate.smtp.replies import R_LINE_TOO_LONG, Reply
from relaygate.smtp.session_facts import ClientFacts
from relaygate.smtp.settings import SMTPSettings
from relaygate.smtp.submission import (
    Answer,
    Authenticate,
    BackendLoginRefused,
    Close,
    Login,
    Mistake,
    Submission,
)
from tests.smtp_harness import BACKEND, BackendEnd, FakeRouter, FrontHarness, make_config


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


PLAIN = b64(b"\0alice@example.org\0s3cret")


def submission_config(**smtp: Any) -> dict[str, Any]:
    """A config with AUTH on and an (unused) auth service URL: the harness routes itself."""
    config = make_config(
        **{"auth": ["plain", "login", "cram-md5"], "backend_auth": "none", **smtp}
    )
    config["auth"] = {"http": "http://127.0.0.1:9/auth"}
    return config


def authed(config: dict[str, Any] | None = None) -> FrontHarness:
    """A session that said EHLO and logged in with AUTH PLAIN."""
    h = FrontHarness(config or submission_config())
    h.send(b"EHLO client.test\r\nAUTH PLAIN " + PLAIN + b"\r\n")
    assert h.replies().endswith(b"235 2.7.0 Authentication successful\r\n")
    return h


class AdvertisingTests(SynchronousTestCase):
    """What EHLO says about AUTH."""

    def test_ehlo_lists_mechanisms(self) -> None:
        """EHLO ends with AUTH and the configured mechanisms, in order."""
        h = FrontHarness(submission_config(auth=["login", "plain"], extensions=["8BITMIME"]))
        h.replies()
        h.send(b"EHLO client.test\r\n")
        self.assertEqual(h.replies(), b"250-gw.test\r\n250-8BITMIME\r\n250 AUTH LOGIN PLAIN\r\n")

    def test_no_auth_line_without_mechanisms(self) -> None:
        """With auth = ["none"] there is no AUTH line and AUTH is not available."""
        h = FrontHarness(make_config(extensions=["8BITMIME"]))
        h.replies()
        h.send(b"EHLO client.test\r\nAUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(
            h.replies(),
            b"250-gw.test\r\n250 8BITMIME\r\n502 5.5.1 Error: command not available\r\n",
        )

    def test_external_needs_a_verified_certificate(self) -> None:
        """EXTERNAL is not offered, and refused, on a session without a client certificate."""
        config = submission_config(auth=["plain", "external"], extensions=[])
        config["tls"] = {"verify_client": "optional"}
        h = FrontHarness(_with_client_ca(self, config))
        h.replies()
        h.send(b"EHLO client.test\r\nAUTH EXTERNAL =\r\n")
        self.assertEqual(
            h.replies(),
            b"250-gw.test\r\n250 AUTH PLAIN\r\n535 5.7.8 No verified client certificate\r\n",
        )

    def test_external_needs_a_user(self) -> None:
        """EXTERNAL with no identity works when the service names the user, else 454."""
        config = submission_config(auth=["external"], extensions=[])
        config["tls"] = {"verify_client": "optional"}
        h = FrontHarness(_with_client_ca(self, config))
        h.front._facts.tls = ClientTLS("TLSv1.3", "TLS_AES_128_GCM_SHA256", "SUCCESS")
        h.replies()
        h.send(b"EHLO client.test\r\n")
        self.assertEqual(h.replies(), b"250-gw.test\r\n250 AUTH EXTERNAL\r\n")
        h.send(b"AUTH EXTERNAL =\r\n")
        self.assertEqual(h.replies(), b"454 4.7.0 Temporary authentication failure\r\n")
        h.router.answer = Accept((BACKEND,), user=b"juergen")
        h.send(b"AUTH EXTERNAL\r\n")
        self.assertEqual(h.replies(), b"334 \r\n")
        h.send(b"=\r\n")
        self.assertEqual(h.replies(), b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual([r.method for r in h.router.requests], ["external", "external"])
        self.assertEqual(h.front.session.user, "juergen")


def _with_client_ca(case: SynchronousTestCase, config: dict[str, Any]) -> dict[str, Any]:
    """Give C{config} a real client CA bundle (the config check loads it)."""
    from tests.certs import make_pki

    pki = make_pki(case.mktemp())
    config["tls"]["client_ca"] = pki.ca.certificate
    config["tls"]["certificate"] = pki.server.certificate
    config["tls"]["key"] = pki.server.key
    return config


class ExchangeTests(SynchronousTestCase):
    """Each mechanism's exchange, and what the router is asked."""

    def test_plain_initial_response(self) -> None:
        """AUTH PLAIN with an initial response asks the router once, then 235."""
        h = FrontHarness(submission_config())
        h.replies()
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(h.replies(), b"235 2.7.0 Authentication successful\r\n")
        [request] = h.router.requests
        self.assertEqual(
            (request.method, request.user, request.password, request.attempt),
            ("plain", b"alice@example.org", b"s3cret", 1),
        )
        self.assertEqual(request.helo, b"client.test")
        self.assertEqual(h.front.session.user, "alice@example.org")

    def test_plain_continuation(self) -> None:
        """AUTH PLAIN without a response gets an empty 334 challenge first."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN\r\n")
        self.assertEqual(h.replies(), b"334 \r\n")
        h.send(PLAIN + b"\r\n")
        self.assertEqual(h.replies(), b"235 2.7.0 Authentication successful\r\n")

    def test_login_without_initial_user(self) -> None:
        """AUTH LOGIN asks for the user and the password; sent as method login."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH LOGIN\r\n")
        self.assertEqual(h.replies(), b"334 VXNlcm5hbWU6\r\n")
        h.send(b64(b"bob") + b"\r\n")
        self.assertEqual(h.replies(), b"334 UGFzc3dvcmQ6\r\n")
        h.send(b64(b"pw") + b"\r\n")
        self.assertEqual(h.replies(), b"235 2.7.0 Authentication successful\r\n")
        [request] = h.router.requests
        self.assertEqual(
            (request.method, request.user, request.password), ("login", b"bob", b"pw")
        )

    def test_login_with_initial_user(self) -> None:
        """AUTH LOGIN with the user as initial response asks only for the password."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH LOGIN " + b64(b"bob") + b"\r\n")
        self.assertEqual(h.replies(), b"334 UGFzc3dvcmQ6\r\n")
        h.send(b64(b"pw") + b"\r\n")
        self.assertEqual(h.replies(), b"235 2.7.0 Authentication successful\r\n")

    def test_cram_md5(self) -> None:
        """CRAM-MD5 challenges with <rand.time@name> and sends it as the salt."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH CRAM-MD5\r\n")
        reply = h.replies()
        self.assertTrue(reply.startswith(b"334 "))
        salt = base64.b64decode(reply[4:].strip())
        self.assertRegex(salt, re.compile(rb"^<\d+\.\d+@gw\.test>$"))
        digest = hmac.new(b"pw", salt, hashlib.md5).hexdigest().encode()
        h.send(b64(b"bob " + digest) + b"\r\n")
        self.assertEqual(h.replies(), b"235 2.7.0 Authentication successful\r\n")
        [request] = h.router.requests
        self.assertEqual(
            (request.method, request.user, request.password, request.salt),
            ("cram-md5", b"bob", digest, salt),
        )

    def test_cancel(self) -> None:
        """A * line cancels the exchange: 501 5.7.0, and the session goes on."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH LOGIN\r\n*\r\nNOOP\r\n")
        self.assertEqual(
            h.replies(),
            b"334 VXNlcm5hbWU6\r\n501 5.7.0 Authentication aborted\r\n250 2.0.0 Ok\r\n",
        )
        self.assertEqual(h.router.requests, [])

    def test_malformed_base64(self) -> None:
        """A response that is not base64 gets 501 5.5.2 and counts as an error."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN not*base64\r\n")
        self.assertEqual(h.replies(), b"501 5.5.2 Cannot decode response\r\n")
        h.send(b"AUTH PLAIN\r\n%%%\r\n")
        self.assertEqual(h.replies(), b"334 \r\n501 5.5.2 Cannot decode response\r\n")
        h.send(b"AUTH PLAIN " + b64(b"no separators") + b"\r\n")
        self.assertEqual(h.replies(), b"501 5.5.2 Cannot decode response\r\n")
        self.assertEqual(h.router.requests, [])

    def test_over_long_response(self) -> None:
        """A response longer than max_line_length ends the exchange with 500 5.5.6."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN\r\n")
        h.replies()
        h.send(b"A" * 5000 + b"\r\nNOOP\r\n")
        self.assertEqual(
            h.replies(),
            b"500 5.5.6 Authentication exchange line is too long\r\n250 2.0.0 Ok\r\n",
        )
        self.assertEqual(h.router.requests, [])

    def test_unknown_mechanism_and_order(self) -> None:
        """Unknown or unconfigured mechanisms get 504; AUTH needs EHLO first; no AUTH twice."""
        h = FrontHarness(submission_config(auth=["plain"]))
        h.replies()
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(h.replies(), b"503 5.5.1 Error: send EHLO first\r\n")
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH LOGIN\r\nAUTH GSSAPI\r\nAUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(
            h.replies(),
            b"504 5.5.4 Unrecognized authentication type\r\n"
            b"504 5.5.4 Unrecognized authentication type\r\n"
            b"235 2.7.0 Authentication successful\r\n",
        )
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(h.replies(), b"503 5.5.1 Error: already authenticated\r\n")


class RouterAnswerTests(SynchronousTestCase):
    """Refusals, waits, attempts and an unavailable router."""

    def test_refusal_is_535_with_message(self) -> None:
        """A refusal shows the router's message with 535 5.7.8; the client may try again."""
        h = FrontHarness(submission_config())
        h.router.answer = Refuse("Invalid login or password")
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(h.replies(), b"535 5.7.8 Invalid login or password\r\n")
        self.assertFalse(h.client.disconnecting)
        h.router.answer = Accept((BACKEND,))
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(h.replies(), b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual([r.attempt for r in h.router.requests], [1, 2])

    def test_error_code_replaces_535(self) -> None:
        """Auth-Error-Code replaces the code and enhanced status."""
        h = FrontHarness(submission_config())
        h.router.answer = Refuse("Go away", smtp_code="550 5.7.1")
        h.send(b"EHLO client.test\r\nAUTH PLAIN " + PLAIN + b"\r\n")
        self.assertTrue(h.replies().endswith(b"550 5.7.1 Go away\r\n"))

    def test_wait_delays_the_refusal(self) -> None:
        """Auth-Wait delays the 535 by that many seconds, holding later commands back."""
        h = FrontHarness(submission_config())
        h.router.answer = Refuse("Slow down", wait=3.0)
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\nNOOP\r\n")
        h.reactor.advance(2.9)
        self.assertEqual(h.replies(), b"")
        h.reactor.advance(0.2)
        self.assertEqual(h.replies(), b"535 5.7.8 Slow down\r\n250 2.0.0 Ok\r\n")

    def test_too_many_attempts_close(self) -> None:
        """The max_auth_attempts-th refusal is answered, then the connection closes."""
        h = FrontHarness(submission_config(max_auth_attempts=2))
        h.router.answer = Refuse("No")
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertFalse(h.client.disconnecting)
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        self.assertEqual(h.replies(), b"535 5.7.8 No\r\n535 5.7.8 No\r\n")
        self.assertTrue(h.client.disconnecting)
        self.assertEqual(h.front.session.end, "too many failed logins")

    def test_router_unavailable_is_454(self) -> None:
        """An auth service that can't answer gives 454 4.7.0, and the session stays."""
        h = FrontHarness(submission_config())
        failing: Deferred[Decision] = Deferred()
        h.router.answer = failing
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"AUTH PLAIN " + PLAIN + b"\r\n")
        failing.errback(RouterUnavailable("down"))
        self.assertEqual(h.replies(), b"454 4.7.0 Temporary authentication failure\r\n")
        self.assertFalse(h.client.disconnecting)

    def test_mail_before_auth_is_530(self) -> None:
        """Without none among the methods, MAIL needs AUTH first."""
        h = FrontHarness(submission_config())
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(h.replies(), b"530 5.7.0 Authentication required\r\n")

    def test_none_allows_mail_without_auth(self) -> None:
        """With none among the methods, MAIL works unauthenticated (routed per RCPT)."""
        h = FrontHarness(submission_config(auth=["none", "plain"]))
        h.send(b"EHLO client.test\r\n")
        h.replies()
        h.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(h.replies(), b"250 2.1.0 Ok\r\n")


def _extensions(xclient: bytes = b"", auth: bool = False) -> bytes:
    lines = [b"250-backend", b"250-PIPELINING"]
    if xclient:
        lines.append(b"250-XCLIENT " + xclient)
    if auth:
        lines.append(b"250-AUTH PLAIN")
    lines.append(b"250 8BITMIME")
    return b"\r\n".join(lines) + b"\r\n"


class BackendLoginTests(SynchronousTestCase):
    """The login decides the backend, and the backend learns who logged in."""

    def start_transaction(self, h: FrontHarness) -> BackendEnd:
        h.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        backend = h.connect_backend()
        self.assertEqual(backend.received(), b"EHLO gw.test\r\n")
        return backend

    def test_auth_decision_routes_every_rcpt(self) -> None:
        """After AUTH no RCPT is looked up: the login's backend serves the transaction."""
        h = authed(submission_config(backend_auth="none"))
        h.router.answer = Refuse("must not be asked")
        backend = self.start_transaction(h)
        backend.reply(_extensions())
        self.assertEqual(
            backend.received(), b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n"
        )
        self.assertEqual(len(h.router.requests), 1)

    def test_xclient_login(self) -> None:
        """backend_auth = xclient sends LOGIN= (xtext) with the router's Auth-User."""
        h = FrontHarness(submission_config(xclient=True, backend_auth="xclient"))
        h.router.answer = Accept((BACKEND,), user=b"alice+x@example.org")
        h.send(b"EHLO client.test\r\nAUTH PLAIN " + PLAIN + b"\r\n")
        h.replies()
        backend = self.start_transaction(h)
        backend.reply(_extensions(xclient=b"ADDR PORT NAME PROTO HELO LOGIN"))
        self.assertEqual(
            backend.received(),
            b"XCLIENT ADDR=127.0.0.1 PORT=40000 NAME=[UNAVAILABLE] PROTO=ESMTP "
            b"HELO=client.test LOGIN=alice+2Bx@example.org\r\n",
        )

    def test_backend_without_xclient_login_is_4xx(self) -> None:
        """A backend that can't be told the login gets the client a 451 4.7.0, no relay."""
        h = authed(submission_config(xclient=True, backend_auth="xclient"))
        backend = self.start_transaction(h)
        backend.reply(_extensions(xclient=b"ADDR PORT"))
        self.assertEqual(backend.received(), b"QUIT\r\n")
        self.assertEqual(
            h.replies(),
            b"250 2.1.0 Ok\r\n451 4.7.0 The mail server refused the login, try again later\r\n",
        )

    def test_backend_auth_plain(self) -> None:
        """backend_auth = plain logs in with Auth-User/Auth-Pass before MAIL."""
        h = FrontHarness(submission_config(backend_auth="plain"))
        h.router.answer = Accept((BACKEND,), user=b"alice", password=b"backend-pw")
        h.send(b"EHLO client.test\r\nAUTH PLAIN " + PLAIN + b"\r\n")
        h.replies()
        backend = self.start_transaction(h)
        backend.reply(_extensions(auth=True))
        self.assertEqual(
            backend.received(), b"AUTH PLAIN " + b64(b"\0alice\0backend-pw") + b"\r\n"
        )
        backend.reply(b"235 2.7.0 ok\r\n")
        self.assertEqual(
            backend.received(), b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n"
        )

    def test_backend_auth_plain_uses_client_password(self) -> None:
        """Without Auth-Pass, the client's own credentials log in at the backend."""
        h = authed(submission_config(backend_auth="plain"))
        backend = self.start_transaction(h)
        backend.reply(_extensions(auth=True))
        self.assertEqual(backend.received(), b"AUTH PLAIN " + PLAIN + b"\r\n")

    def test_backend_refusing_login_is_4xx(self) -> None:
        """A backend that answers 535 to the login gives the client 451 4.7.0 at RCPT."""
        h = authed(submission_config(backend_auth="plain"))
        backend = self.start_transaction(h)
        backend.reply(_extensions(auth=True))
        backend.received()
        h.replies()
        backend.reply(b"535 5.7.8 no\r\n")
        self.assertEqual(
            h.replies(), b"451 4.7.0 The mail server refused the login, try again later\r\n"
        )


class SASLTests(SynchronousTestCase):
    """The exchange machine and command parser on their own."""

    def test_parse_auth_command(self) -> None:
        """Mechanism names are upper-cased; junk is refused."""
        self.assertEqual(parse_auth_command(b"plain AbC="), ("PLAIN", b"AbC="))
        self.assertEqual(parse_auth_command(b"LOGIN"), ("LOGIN", None))
        self.assertIsNone(parse_auth_command(b""))
        self.assertIsNone(parse_auth_command(b"PLAIN a b"))
        self.assertIsNone(parse_auth_command(b"PL\xffAIN"))

    def test_control_characters_refused(self) -> None:
        """Identities with CR or LF never reach the router."""
        exchange = SASLExchange("login")
        exchange.first(None)
        self.assertEqual(exchange.respond(b64(b"bob\r\nRCPT")).name, "MALFORMED")  # type: ignore[union-attr]

    def test_external(self) -> None:
        """EXTERNAL's response is the authorization identity ("=" for none)."""
        exchange = SASLExchange("external")
        step = exchange.first(b"=")
        self.assertEqual(getattr(step, "user", None), b"")


def logic(**smtp: Any) -> tuple[Submission, Clock]:
    """A L{Submission} on its own, with C{smtp} overrides of the submission config."""
    loaded = parse(submission_config(**smtp), "test.toml")
    clock = Clock()
    return Submission(SMTPSettings.from_config(loaded, loaded.listen[0], None), clock), clock


def ehlo_facts() -> ClientFacts:
    """The facts of a client that said EHLO over plaintext."""
    return ClientFacts(
        ip="192.0.2.1", port=40000, label="192.0.2.1:40000", helo=b"c.test", extended=True
    )


class SubmissionLogicTests(SynchronousTestCase):
    """L{Submission} without a front or a transport: facts in, what to do out."""

    def test_auth_needs_ehlo(self) -> None:
        """AUTH before EHLO (or after HELO) is a client mistake."""
        submission, _ = logic()
        facts = ehlo_facts()
        facts.extended = False
        self.assertEqual(
            submission.auth_command(b"PLAIN " + PLAIN, facts, False), Mistake(R_AUTH_NEED_EHLO)
        )

    def test_auth_inside_a_transaction(self) -> None:
        """AUTH after MAIL is refused with 503."""
        submission, _ = logic()
        self.assertEqual(
            submission.auth_command(b"PLAIN " + PLAIN, ehlo_facts(), True),
            Mistake(R_AUTH_IN_TRANSACTION),
        )

    def test_plain_initial_response_gives_credentials(self) -> None:
        """PLAIN with an initial response ends the exchange at once with the credentials."""
        submission, _ = logic()
        outcome = submission.auth_command(b"PLAIN " + PLAIN, ehlo_facts(), False)
        self.assertEqual(
            outcome, Authenticate(Credentials("plain", b"alice@example.org", b"s3cret"))
        )
        self.assertFalse(submission.in_exchange)

    def test_login_exchange(self) -> None:
        """LOGIN asks twice (334), and a cancel ends the exchange with 501."""
        submission, _ = logic()
        outcome = submission.auth_command(b"LOGIN", ehlo_facts(), False)
        self.assertEqual(outcome, Answer(Reply(334, (b"VXNlcm5hbWU6",))))
        self.assertTrue(submission.in_exchange)
        self.assertEqual(submission.auth_response(b"*"), Answer(R_AUTH_CANCELLED))
        self.assertFalse(submission.in_exchange)

    def test_line_too_long_ends_the_exchange(self) -> None:
        """An over-long line inside an exchange ends it, with its own reply."""
        submission, _ = logic()
        submission.auth_command(b"LOGIN", ehlo_facts(), False)
        self.assertEqual(submission.line_too_long(), R_AUTH_TOO_LONG)
        self.assertFalse(submission.in_exchange)
        self.assertEqual(submission.line_too_long(), R_LINE_TOO_LONG)

    def test_authenticate_accepted(self) -> None:
        """An accepted login is remembered and answered 235, naming the user to record."""
        submission, _ = logic()
        router = FakeRouter()
        credentials = Credentials("plain", b"alice@example.org", b"s3cret")
        outcome = self.successResultOf(
            Deferred.fromCoroutine(
                submission.authenticate(credentials, ehlo_facts(), router, None)
            )
        )
        self.assertEqual(outcome, Answer(R_AUTH_OK, user="alice@example.org"))
        assert submission.login is not None
        self.assertEqual(submission.login.backend_user, b"alice@example.org")
        self.assertFalse(submission.needs_auth())
        [request] = router.requests
        self.assertEqual(
            (request.client_ip, request.helo, request.attempt), ("192.0.2.1", b"c.test", 1)
        )

    def test_authenticate_refused_until_the_limit(self) -> None:
        """Refusals are answered; the max_auth_attempts-th one ends the session."""
        submission, _ = logic(max_auth_attempts=2)
        router = FakeRouter()
        router.answer = Refuse("No")
        credentials = Credentials("plain", b"alice", b"wrong")

        def attempt() -> Answer | Close:
            return self.successResultOf(
                Deferred.fromCoroutine(
                    submission.authenticate(credentials, ehlo_facts(), router, None)
                )
            )

        no = Reply(535, (b"5.7.8 No",))
        self.assertEqual(attempt(), Answer(no))
        self.assertEqual(attempt(), Close(no, "too many failed logins"))
        self.assertIsNone(submission.login)

    def test_backend_login_checks(self) -> None:
        """backend_auth = "plain" needs AUTH at the backend; "xclient" needs XCLIENT LOGIN."""
        submission, _ = logic(backend_auth="plain")
        address = HostPort("127.0.0.1", 2500)
        self.assertIsNone(submission.backend_plain_login({b"AUTH": b"PLAIN"}, address))
        submission.login = Login(Credentials("plain", b"alice", b"pw"), Accept((BACKEND,)))
        self.assertEqual(
            submission.backend_plain_login({b"AUTH": b"PLAIN"}, address), (b"alice", b"pw")
        )
        self.assertRaises(BackendLoginRefused, submission.backend_plain_login, {}, address)
        xclient, _ = logic(backend_auth="xclient", xclient=True)
        xclient.login = submission.login
        self.assertEqual(xclient.xclient_attributes(), [(b"LOGIN", b"alice")])
        xclient.check_backend_login({b"XCLIENT": b"ADDR LOGIN"}, address)
        self.assertRaises(
            BackendLoginRefused, xclient.check_backend_login, {b"XCLIENT": b"ADDR"}, address
        )
