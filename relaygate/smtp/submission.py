"""The submission side of an SMTP front session: AUTH, the greeting delay, and what the backend
learns of the client (who logged in, its real address).

Kept out of L{relaygate.smtp.front} so the relay's transaction logic stays readable; the front
owns one L{Submission} and calls it at the few points where submission changes the session:
connection, EHLO, AUTH and its continuation lines, MAIL, and each new backend connection.

nginx's mail module is the model (C{ngx_mail_smtp_handler.c}, C{ngx_mail_auth_http_module.c}):
the credentials go to the router (the auth_http service) with the mechanism's C{Auth-Method};
its answer decides the backend for the rest of the session; the backend learns the login
through XCLIENT C{LOGIN=} or an C{AUTH PLAIN} of its own (C{[smtp] backend_auth}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail import smtp

from relaygate.addresses import HostPort
from relaygate.backend.errors import BackendError
from relaygate.policy import Limits, limits_for
from relaygate.proxy_protocol import encode_header, proxy_addresses
from relaygate.routing.router import Accept, AuthRequest, ProxyAddresses, Refuse, RouterUnavailable
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
    backend_plain,
    challenge_reply,
)
from relaygate.smtp.backend import BackendClient
from relaygate.smtp.replies import R_LINE_TOO_LONG, R_NOT_AVAILABLE, Reply
from relaygate.text import printable

if TYPE_CHECKING:
    from relaygate.smtp.front import SMTPFront

R_EARLY_TALKER = Reply(554, (b"5.5.0 Error: improper use of SMTP command pipelining",))
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


class Submission:
    """AUTH, the greeting delay and the backend's view of the client, for one L{SMTPFront}."""

    _log = Logger()

    def __init__(self, front: SMTPFront) -> None:
        self._front = front
        self._exchange: SASLExchange | None = None
        self._greeting_timer: IDelayedCall | None = None
        self._early = False
        self._attempts = 0
        self._failures = 0
        self._limits: Limits | None = None
        self.login: Login | None = None
        self.proxy: ProxyAddresses | None = None
        self.backend_proxy_protocol = "none"

    # -- connection --------------------------------------------------------------------

    def connected(self) -> None:
        """Learn what the listener's wrappers know: the PROXY header, the limits."""
        transport = self._front.transport
        self.proxy = proxy_addresses(transport)
        self._limits = limits_for(transport)

    def disconnected(self) -> None:
        """Stop the greeting timer."""
        timer, self._greeting_timer = self._greeting_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def delay_greeting(self) -> bool:
        """Hold the greeting back for C{[smtp] greeting_delay} (nginx's smtp_greeting_delay).

        @return: True when the front must not greet now.
        """
        delay = self._front._settings.greeting_delay
        if not delay:
            return False
        self._greeting_timer = self._front.callLater(delay, self._greet)
        return True

    def _greet(self) -> None:
        self._greeting_timer = None
        smtp.ESMTP.connectionMade(self._front)

    def early_talker(self) -> bool:
        """Data before the delayed greeting: refuse it as nginx does. True when data is dropped.

        Spam engines send their commands without waiting; a real client waits for the 220.
        """
        if self._early:
            return True
        if self._greeting_timer is None:
            return False
        self._early = True
        self.disconnected()
        front = self._front
        front.session.end = "talked before the greeting"
        self._log.info("closing {client}: talked before the greeting", client=front.session.client)
        front._reply_and_close(R_EARLY_TALKER)
        return True

    # -- EHLO, MAIL -------------------------------------------------------------------

    def _mechanisms(self) -> list[bytes]:
        methods = self._front._settings.auth
        if not self._external_allowed():
            methods = tuple(m for m in methods if m != "external")
        return mechanism_names(methods)

    def _external_allowed(self) -> bool:
        info = self._front._client_tls
        return info is not None and info.verify == "SUCCESS"

    def ehlo_keywords(self) -> tuple[bytes, ...]:
        """The C{AUTH ...} line of the EHLO reply (none before TLS where TLS is required)."""
        if self._front._tls_needed():
            return ()
        names = self._mechanisms()
        return (b"AUTH " + b" ".join(names),) if names else ()

    def needs_auth(self) -> bool:
        """True when MAIL must wait for AUTH (C{none} is not among C{[smtp] auth})."""
        return self.login is None and "none" not in self._front._settings.auth

    def reset(self) -> None:
        """Forget the login and any exchange in progress (STARTTLS, RFC 3207 section 4.2)."""
        self.login = None
        self._exchange = None
        self._front.mode = smtp.COMMAND

    def line_too_long(self) -> Reply:
        """The reply to an over-long line; during AUTH it also ends the exchange."""
        if self._exchange is None:
            return R_LINE_TOO_LONG
        self._exchange = None
        self._front.mode = smtp.COMMAND
        return R_AUTH_TOO_LONG

    # -- AUTH ---------------------------------------------------------------------------

    def auth_command(self, rest: bytes) -> None:
        """C{AUTH mechanism [initial-response]} (RFC 4954 section 4)."""
        front = self._front
        if not mechanism_names(front._settings.auth):
            front._protocol_error(R_NOT_AVAILABLE)
            return
        if front._helo_arg is None or not front._extended:
            front._protocol_error(R_AUTH_NEED_EHLO)
            return
        if self.login is not None:
            front._protocol_error(R_AUTH_TWICE)
            return
        if front._tx is not None:
            front._protocol_error(R_AUTH_IN_TRANSACTION)
            return
        parsed = parse_auth_command(rest)
        if parsed is None:
            front._protocol_error(R_AUTH_SYNTAX)
            return
        name, initial = parsed
        method = MECHANISMS.get(name) or ("external" if name == "EXTERNAL" else None)
        if method is None or method not in front._settings.auth:
            front._protocol_error(R_AUTH_UNKNOWN)
            return
        if method == "external" and not self._external_allowed():
            front.send_reply(R_AUTH_NO_CERTIFICATE)
            return
        salt = b""
        if method == "cram-md5":
            salt = make_salt(front._settings.name.decode("ascii"), front._reactor)
        self._exchange = SASLExchange(method, salt)
        self._step(self._exchange.first(initial))

    def auth_response(self, line: bytes) -> None:
        """A client's line while an exchange waits for it (C{334} was sent)."""
        if self._exchange is None:
            self._front.mode = smtp.COMMAND
            self._front.state_COMMAND(line)
            return
        self._step(self._exchange.respond(line))

    def _step(self, step: Step) -> None:
        front = self._front
        if isinstance(step, Challenge):
            front.mode = smtp.AUTH
            front.send_reply(challenge_reply(step))
            return
        self._exchange = None
        front.mode = smtp.COMMAND
        if step is Failed.CANCELLED:
            front.send_reply(R_AUTH_CANCELLED)
        elif step is Failed.MALFORMED:
            front._protocol_error(R_AUTH_MALFORMED)
        else:
            assert isinstance(step, Credentials)
            front._run(self._authenticate(step))

    async def _authenticate(self, credentials: Credentials) -> Reply | None:
        """Ask the router about C{credentials}; the reply to AUTH, or C{None} after a close."""
        front = self._front
        client_ip = front._client_ip
        if self._limits is not None and await self._limits.auth_blocked(client_ip):
            front.session.end = "too many failed logins"
            front._reply_and_close(R_AUTH_BLOCKED)
            return None
        self._attempts += 1
        request = AuthRequest(
            protocol="smtp",
            client_ip=client_ip,
            client_port=front._client_port,
            method=credentials.method,
            user=credentials.user,
            password=credentials.password,
            salt=credentials.salt,
            attempt=self._attempts,
            client_host="[UNAVAILABLE]",
            helo=front._helo_arg or b"",
            tls=front._client_tls,
            proxy=self.proxy,
        )
        try:
            decision = await front._router.lookup(request)
        except RouterUnavailable as e:
            self._log.warn(
                "auth service unavailable for {client}: {error}",
                client=front.session.client,
                error=str(e),
            )
            return R_AUTH_TEMPORARY
        if isinstance(decision, Refuse):
            return await self._refused(credentials, decision)
        assert isinstance(decision, Accept)
        login = Login(credentials, decision)
        if not login.backend_user:
            # EXTERNAL without an authorization identity: only the service can name the user.
            self._log.error(
                "auth service accepted {method} for {client} without naming a user (Auth-User)",
                method=credentials.method,
                client=front.session.client,
            )
            return R_AUTH_TEMPORARY
        self.login = login
        # No event of its own: the session's access event carries the user, and twistd's log
        # formats even debug events, which would cost a busy front a tenth of its login time.
        front.session.user = printable(self.login.backend_user)
        return R_AUTH_OK

    async def _refused(self, credentials: Credentials, decision: Refuse) -> Reply | None:
        front = self._front
        self._failures += 1
        self._log.info(
            "{client} failed to authenticate as {user!r} ({method}): {message!r}",
            client=front.session.client,
            user=printable(credentials.user),
            method=credentials.method,
            message=decision.message,
        )
        blocked = False
        if self._limits is not None:
            blocked = await self._limits.auth_failed(front._client_ip)
        if decision.wait:
            await deferLater(front._reactor, decision.wait)
        reply = auth_refusal(decision.message, decision.smtp_code)
        if blocked or self._failures >= front._settings.max_auth_attempts:
            front.session.end = "too many failed logins"
            front._reply_and_close(reply)
            return None
        return reply

    # -- the backend --------------------------------------------------------------------

    @property
    def proxy_preamble(self) -> bytes:
        """The PROXY header for a new backend connection (C{backend_proxy_protocol}), or b""."""
        version = self.backend_proxy_protocol
        if version not in ("v1", "v2"):
            return b""
        front = self._front
        assert front.transport is not None
        host = front.transport.getHost()
        destination = (str(getattr(host, "host", "")), int(getattr(host, "port", 0)))
        return encode_header(version, (front._client_ip, front._client_port), destination)

    def xclient_attributes(self) -> list[tuple[bytes, bytes]]:
        """XCLIENT C{LOGIN=} for a logged-in session with C{backend_auth = "xclient"}."""
        if self.login is None or self._front._settings.backend_auth != "xclient":
            return []
        return [(b"LOGIN", self.login.backend_user)]

    def check_backend_login(self, backend: BackendClient, address: HostPort) -> None:
        """Refuse a backend that cannot learn the login the way C{backend_auth} says.

        @raise BackendLoginRefused: XCLIENT without the LOGIN attribute, or an identity too
            long for its command line.
        """
        login = self.login
        if login is None or self._front._settings.backend_auth != "xclient":
            return
        offered = backend.extensions.get(b"XCLIENT")
        names = (offered or b"").upper().split()
        if not self._front._settings.xclient or b"LOGIN" not in names:
            raise BackendLoginRefused(f"{address} does not offer XCLIENT LOGIN")
        if len(login.backend_user) > MAX_USER:
            raise BackendLoginRefused("the login is too long for XCLIENT")

    async def log_in_backend(self, backend: BackendClient, address: HostPort) -> None:
        """C{backend_auth = "plain"}: log in at the backend as the router said.

        @raise BackendLoginRefused: no password to log in with, no AUTH offered, or not 235.
        """
        login = self.login
        if login is None or self._front._settings.backend_auth != "plain":
            return
        password = login.backend_password
        if password is None:
            raise BackendLoginRefused("the auth service sent no Auth-Pass for the backend")
        if b"AUTH" not in backend.extensions:
            raise BackendLoginRefused(f"{address} does not offer AUTH")
        reply = await backend.command(backend_plain(login.backend_user, password))
        if reply.code != 235:
            raise BackendLoginRefused(f"{address} refused the login: {reply.summary()}")
