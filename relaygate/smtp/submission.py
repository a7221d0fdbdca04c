"""The submission side of an SMTP front session: AUTH, and what the backend learns of the
login.

No I/O: the front owns one L{Submission} and calls it with the session's facts
(L{ClientFacts}); each call returns what the front must do (an L{Answer}, a client L{Mistake},
a L{Close}, or L{Authenticate} with the credentials the exchange collected). Only
L{Submission.authenticate} waits, on the router and the limit store it is handed. It never
reaches back into the front, and it does not import it.

nginx's mail module is the model (C{ngx_mail_smtp_handler.c}, C{ngx_mail_auth_http_module.c}):
the credentials go to the router (the auth_http service) with the mechanism's C{Auth-Method};
its answer decides the backend for the rest of the session; the backend learns the login
through XCLIENT C{LOGIN=} or an C{AUTH PLAIN} of its own (C{[smtp] backend_auth}).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from relaygate.addresses import HostPort
from relaygate.backend.errors import BackendError
from relaygate.policy import Limits
from relaygate.routing.router import Accept, AuthRequest, Refuse, Router, RouterUnavailable
from relaygate.sasl import (
    MAX_USER,
    MECHANISMS,
    Challenge,
    Credentials,
    Failed,
    SASLExchange,
    Step,
    make_salt,
    mechanism_names,
    parse_auth_command,
)
from relaygate.smtp.auth_replies import (
    R_AUTH_CANCELLED,
    R_AUTH_IN_TRANSACTION,
    R_AUTH_MALFORMED,
    R_AUTH_NEED_EHLO,
    R_AUTH_NO_CERTIFICATE,
    R_AUTH_OK,
    R_AUTH_SYNTAX,
    R_AUTH_TEMPORARY,
    R_AUTH_TOO_LONG,
    R_AUTH_TWICE,
    R_AUTH_UNKNOWN,
    auth_refusal,
    challenge_reply,
)
from relaygate.smtp.replies import R_LINE_TOO_LONG, R_NOT_AVAILABLE, Reply
from relaygate.smtp.session_facts import ClientFacts
from relaygate.smtp.settings import SMTPSettings
from relaygate.text import printable

R_AUTH_BLOCKED = Reply(421, (b"4.7.0 Error: too many failed logins from your address",))


class BackendLoginRefused(BackendError):
    """The backend did not accept (or cannot be told) the client's login: a 4xx, never a drop."""


@dataclass(frozen=True)
class Login:
    """A successful AUTH: what the client claimed and what the router answered."""

    credentials: Credentials
    decision: Accept

    @property
    def backend_user(self) -> bytes:
        """The user the backend is told (the router's C{Auth-User} rewrite, if any)."""
        user = self.decision.user
        return user if user is not None else self.credentials.user

    @property
    def backend_password(self) -> bytes | None:
        """The password for the backend's AUTH PLAIN: C{Auth-Pass}, else the client's own."""
        if self.decision.password is not None:
            return self.decision.password
        if self.credentials.method in ("plain", "login"):
            return self.credentials.password
        return None


@dataclass(frozen=True)
class Answer:
    """Send C{reply}; C{user} is the login to record once AUTH succeeded."""

    reply: Reply
    user: str | None = None


@dataclass(frozen=True)
class Mistake:
    """A client mistake: answer C{reply} and count it against C{max_errors}."""

    reply: Reply


@dataclass(frozen=True)
class Close:
    """Send C{reply} and end the session, with C{end} as the access log's reason."""

    reply: Reply
    end: str


@dataclass(frozen=True)
class Authenticate:
    """The exchange collected C{credentials}: the front runs L{Submission.authenticate}."""

    credentials: Credentials


Outcome = Answer | Mistake | Close | Authenticate


class Submission:
    """AUTH and the backend's view of the login, for one SMTP session, without I/O."""

    _log = Logger()

    def __init__(self, settings: SMTPSettings, clock: IReactorTime) -> None:
        self._settings = settings
        self._clock = clock
        self._exchange: SASLExchange | None = None
        self._attempts = 0
        self._failures = 0
        self.login: Login | None = None

    @property
    def in_exchange(self) -> bool:
        """True while an AUTH exchange waits for the client's next line (C{334} was sent)."""
        return self._exchange is not None

    # -- EHLO, MAIL -------------------------------------------------------------------

    def _mechanisms(self, facts: ClientFacts) -> list[bytes]:
        methods = self._settings.auth
        if not _external_allowed(facts):
            methods = tuple(m for m in methods if m != "external")
        return mechanism_names(methods)

    def ehlo_keywords(self, facts: ClientFacts, tls_needed: bool) -> tuple[bytes, ...]:
        """The C{AUTH ...} line of the EHLO reply (none before TLS where TLS is required)."""
        if tls_needed:
            return ()
        names = self._mechanisms(facts)
        return (b"AUTH " + b" ".join(names),) if names else ()

    def needs_auth(self) -> bool:
        """True when MAIL must wait for AUTH (C{none} is not among C{[smtp] auth})."""
        return self.login is None and "none" not in self._settings.auth

    def reset(self) -> None:
        """Forget the login and any exchange in progress (STARTTLS, RFC 3207 section 4.2)."""
        self.login = None
        self._exchange = None

    def line_too_long(self) -> Reply:
        """The reply to an over-long line; during AUTH it also ends the exchange."""
        if self._exchange is None:
            return R_LINE_TOO_LONG
        self._exchange = None
        return R_AUTH_TOO_LONG

    # -- AUTH ---------------------------------------------------------------------------

    def auth_command(self, rest: bytes, facts: ClientFacts, in_transaction: bool) -> Outcome:
        """C{AUTH mechanism [initial-response]} (RFC 4954 section 4)."""
        settings = self._settings
        if not mechanism_names(settings.auth):
            return Mistake(R_NOT_AVAILABLE)
        if facts.helo is None or not facts.extended:
            return Mistake(R_AUTH_NEED_EHLO)
        if self.login is not None:
            return Mistake(R_AUTH_TWICE)
        if in_transaction:
            return Mistake(R_AUTH_IN_TRANSACTION)
        parsed = parse_auth_command(rest)
        if parsed is None:
            return Mistake(R_AUTH_SYNTAX)
        name, initial = parsed
        method = MECHANISMS.get(name) or ("external" if name == "EXTERNAL" else None)
        if method is None or method not in settings.auth:
            return Mistake(R_AUTH_UNKNOWN)
        if method == "external" and not _external_allowed(facts):
            return Answer(R_AUTH_NO_CERTIFICATE)
        salt = b""
        if method == "cram-md5":
            salt = make_salt(settings.name.decode("ascii"), self._clock)
        self._exchange = SASLExchange(method, salt)
        return self._step(self._exchange.first(initial))

    def auth_response(self, line: bytes) -> Outcome:
        """A client's line while an exchange waits for it (see L{in_exchange})."""
        assert self._exchange is not None
        return self._step(self._exchange.respond(line))

    def _step(self, step: Step) -> Outcome:
        if isinstance(step, Challenge):
            return Answer(challenge_reply(step))
        self._exchange = None
        if step is Failed.CANCELLED:
            return Answer(R_AUTH_CANCELLED)
        if step is Failed.MALFORMED:
            return Mistake(R_AUTH_MALFORMED)
        assert isinstance(step, Credentials)
        return Authenticate(step)

    async def authenticate(
        self,
        credentials: Credentials,
        facts: ClientFacts,
        router: Router,
        limits: Limits | None,
    ) -> Answer | Close:
        """Ask the router about C{credentials}: the reply to AUTH, or the session's end."""
        if limits is not None and await limits.auth_blocked(facts.ip):
            return Close(R_AUTH_BLOCKED, "too many failed logins")
        self._attempts += 1
        request = AuthRequest(
            protocol="smtp",
            client_ip=facts.ip,
            client_port=facts.port,
            method=credentials.method,
            user=credentials.user,
            password=credentials.password,
            salt=credentials.salt,
            attempt=self._attempts,
            client_host="[UNAVAILABLE]",
            helo=facts.helo or b"",
            tls=facts.tls,
            proxy=facts.proxy,
        )
        try:
            decision = await router.lookup(request)
        except RouterUnavailable as e:
            self._log.warn(
                "auth service unavailable for {client}: {error}",
                client=facts.label,
                error=str(e),
            )
            return Answer(R_AUTH_TEMPORARY)
        if isinstance(decision, Refuse):
            return await self._refused(credentials, decision, facts, limits)
        assert isinstance(decision, Accept)
        login = Login(credentials, decision)
        if not login.backend_user:
            # EXTERNAL without an authorization identity: only the service can name the user.
            self._log.error(
                "auth service accepted {method} for {client} without naming a user (Auth-User)",
                method=credentials.method,
                client=facts.label,
            )
            return Answer(R_AUTH_TEMPORARY)
        self.login = login
        # No event of its own: the session's access event carries the user, and twistd's log
        # formats even debug events, which would cost a busy front a tenth of its login time.
        return Answer(R_AUTH_OK, user=printable(login.backend_user))

    async def _refused(
        self,
        credentials: Credentials,
        decision: Refuse,
        facts: ClientFacts,
        limits: Limits | None,
    ) -> Answer | Close:
        self._failures += 1
        self._log.info(
            "{client} failed to authenticate as {user!r} ({method}): {message!r}",
            client=facts.label,
            user=printable(credentials.user),
            method=credentials.method,
            message=decision.message,
        )
        blocked = False
        if limits is not None:
            blocked = await limits.auth_failed(facts.ip)
        if decision.wait:
            await deferLater(self._clock, decision.wait)
        reply = auth_refusal(decision.message, decision.smtp_code)
        if blocked or self._failures >= self._settings.max_auth_attempts:
            return Close(reply, "too many failed logins")
        return Answer(reply)

    # -- the backend --------------------------------------------------------------------

    def xclient_attributes(self) -> list[tuple[bytes, bytes]]:
        """XCLIENT C{LOGIN=} for a logged-in session with C{backend_auth = "xclient"}."""
        if self.login is None or self._settings.backend_auth != "xclient":
            return []
        return [(b"LOGIN", self.login.backend_user)]

    def check_backend_login(
        self, extensions: dict[bytes, bytes | None], address: HostPort
    ) -> None:
        """Refuse a backend that cannot learn the login the way C{backend_auth} says.

        @param extensions: the backend's EHLO keywords and their parameters.
        @raise BackendLoginRefused: XCLIENT without the LOGIN attribute, or an identity too
            long for its command line.
        """
        login = self.login
        if login is None or self._settings.backend_auth != "xclient":
            return
        offered = extensions.get(b"XCLIENT")
        names = (offered or b"").upper().split()
        if not self._settings.xclient or b"LOGIN" not in names:
            raise BackendLoginRefused(f"{address} does not offer XCLIENT LOGIN")
        if len(login.backend_user) > MAX_USER:
            raise BackendLoginRefused("the login is too long for XCLIENT")

    def backend_plain_login(
        self, extensions: dict[bytes, bytes | None], address: HostPort
    ) -> tuple[bytes, bytes] | None:
        """C{backend_auth = "plain"}: the user and password to log in at the backend with.

        @return: C{None} when the backend is not to be logged in to.
        @raise BackendLoginRefused: no password to log in with, or no AUTH offered.
        """
        login = self.login
        if login is None or self._settings.backend_auth != "plain":
            return None
        password = login.backend_password
        if password is None:
            raise BackendLoginRefused("the auth service sent no Auth-Pass for the backend")
        if b"AUTH" not in extensions:
            raise BackendLoginRefused(f"{address} does not offer AUTH")
        return login.backend_user, password


def _external_allowed(facts: ClientFacts) -> bool:
    info = facts.tls
    return info is not None and info.verify == "SUCCESS"
