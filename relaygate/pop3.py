"""The POP3 front: pre-auth commands, login at the backend, then a byte-for-byte relay.

Before login the front answers CAPA, USER/PASS, APOP, AUTH (PLAIN, LOGIN, CRAM-MD5, EXTERNAL,
with initial responses), STLS, NOOP and QUIT itself, with nginx's replies
(C{src/mail/ngx_mail_pop3_handler.c}). At the backend it sends Dovecot's C{XCLIENT} when the
greeting offers it, then logs in with C{USER}/C{PASS}, or C{AUTH PLAIN} when configured or when
the credentials cannot travel in a POP3 argument. The backend's C{+OK} is the client's answer.

STLS (RFC 2595 section 4) is offered on C{starttls} and C{starttls-required} listeners; the
latter refuses USER, APOP and AUTH until TLS is up, as nginx does. To the backend,
C{backend_tls} sends C{STLS} before anything that identifies the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typing_extensions import override

from relaygate.backend.errors import BackendError
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.imap_syntax import Invalid, parse_line
from relaygate.login.flow import LoggedIn, LoginLeg, LoginOutcome, Refused
from relaygate.login.front import LoginFront
from relaygate.login.line_client import LineBackendClient
from relaygate.login.settings import LoginFrontFactory
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Router
from relaygate.sasl import MECHANISMS, Credentials, Failed, encode_plain, make_salt
from relaygate.tls.server import ServerTLS


class POP3Front(LoginFront):
    """One client's POP3 session; see the module docstring."""

    protocol_name = "pop3"

    def __init__(self, factory: POP3FrontFactory, random: Callable[[], int] | None = None) -> None:
        super().__init__(factory.settings, factory.router, factory.reactor, random)
        self._capabilities = factory.capabilities
        self._pending_user: bytes | None = None

    def _tls_required(self) -> bool:
        return self.settings.tls_mode == "starttls-required" and not self.secure

    def _offered(self, method: str) -> bool:
        """Whether SASL C{method} is on offer now: EXTERNAL needs a verified certificate."""
        if method not in self.settings.auth:
            return False
        return method != "external" or self.has_verified_certificate()

    def _sasl_names(self) -> list[bytes]:
        return [
            name.encode("ascii") for name, method in MECHANISMS.items() if self._offered(method)
        ]

    @override
    def greeting(self) -> bytes:
        if "apop" in self.settings.auth or "cram-md5" in self.settings.auth:
            self.salt = make_salt(self.settings.server_name, self._clock, self._random)
            return b"+OK POP3 ready %s\r\n" % self.salt
        return b"+OK POP3 ready\r\n"

    def capa(self, in_user_state: bool) -> bytes:
        """The CAPA answer, as nginx builds it from the config and TLS state."""
        lines = [b"+OK Capability list follows"]
        lines += [c for c in self._capabilities if c.upper() != b"USER"]
        if self._tls_required():
            lines.append(b"STLS")
        else:
            if "user" in self.settings.auth:
                lines.append(b"USER")
            names = self._sasl_names()
            if names:
                lines.append(b"SASL " + b" ".join(names))
            if (
                not in_user_state
                and self.settings.tls_mode in ("starttls", "starttls-required")
                and not self.secure
            ):
                lines.append(b"STLS")
        lines.append(b".")
        return b"".join(line + b"\r\n" for line in lines)

    @override
    def reply_refused(self, tag: bytes, text: bytes) -> None:
        self.write(b"-ERR %s\r\n" % text)

    @override
    def reply_internal_error(self) -> None:
        self.write(b"-ERR internal server error\r\n")

    @override
    def reply_timeout(self) -> None:
        self.write(b"-ERR Disconnected for inactivity\r\n")

    @override
    def reply_sasl_failed(self, tag: bytes, failed: Failed) -> None:
        self._bad()

    @override
    def generic_refusal(self) -> bytes:
        return b"[AUTH] Authentication failed"

    @override
    def after_failed_login(self) -> None:
        self._pending_user = None

    def _bad(self, fatal: bool = False) -> None:
        self._pending_user = None
        self.invalid(b"-ERR invalid command\r\n", fatal)

    # Input.

    @override
    def step(self) -> bool:
        parsed = parse_line(bytes(self.buffer), self.settings.max_line_length)
        if parsed is None:
            return False
        if isinstance(parsed, Invalid):
            del self.buffer[:]
            self.abandon_sasl()
            self.invalid(b"-ERR line too long\r\n", fatal=True)
            return True
        line, size = parsed
        del self.buffer[:size]
        if self.in_sasl:
            self.sasl_line(line)
            return True
        verb, _, rest = line.partition(b" ")
        handler = getattr(self, "do_" + verb.upper().decode("ascii", "replace"), None)
        if handler is None or (self._pending_user is not None and verb.upper() not in _IN_USER):
            self._bad()
        else:
            handler(rest)
        return True

    def do_CAPA(self, rest: bytes) -> None:
        self.write(self.capa(self._pending_user is not None))

    def do_NOOP(self, rest: bytes) -> None:
        self.write(b"+OK\r\n")

    def do_QUIT(self, rest: bytes) -> None:
        self.write(b"+OK\r\n")
        self.close("logout")

    def do_STLS(self, rest: bytes) -> None:
        """RFC 2595 section 4; C{-ERR} where the listener offers no STLS or TLS is already up."""
        if rest or not self.begin_tls(b"+OK\r\n"):
            self._bad()

    @override
    def reset_session(self) -> None:
        self._pending_user = None

    def do_USER(self, rest: bytes) -> None:
        args = rest.split()
        if "user" not in self.settings.auth or self._tls_required() or len(args) != 1:
            return self._bad()
        self._pending_user = args[0]
        self.write(b"+OK\r\n")

    def do_PASS(self, rest: bytes) -> None:
        # The whole rest of the line is the password: spaces in passwords are common, and
        # Dovecot reads PASS the same way (nginx refuses them).
        user = self._pending_user
        if user is None or not rest:
            return self._bad()
        self._pending_user = None
        self.start_login(b"", Credentials("plain", user, rest))

    def do_APOP(self, rest: bytes) -> None:
        args = rest.split()
        if "apop" not in self.settings.auth or self._tls_required() or len(args) != 2:
            return self._bad()
        user, digest = args
        self.start_login(b"", Credentials("apop", user, digest, self.salt))

    def do_AUTH(self, rest: bytes) -> None:
        if self._tls_required():
            return self._bad()
        args = rest.split()
        if not args:
            names = self._sasl_names()
            self.write(
                b"+OK methods supported:\r\n" + b"".join(n + b"\r\n" for n in names) + b".\r\n"
            )
            return
        mechanism = MECHANISMS.get(args[0].upper().decode("ascii", "replace"))
        if mechanism is None or mechanism not in self.settings.auth or len(args) > 2:
            return self._bad()
        if not self._offered(mechanism):
            self.invalid(b"-ERR EXTERNAL needs a verified client certificate\r\n")
            return
        self.start_sasl(b"", mechanism, args[1] if len(args) == 2 else None)

    # The backend.

    @override
    async def backend_login(
        self, leg: LoginLeg, tag: bytes, user: bytes, password: bytes
    ) -> LoginOutcome:
        backend = leg.client
        greeting = await backend.read_line()
        if not greeting.startswith(b"+OK"):
            raise BackendError(f"unexpected greeting {greeting[:200]!r}")

        async def stls() -> bool:
            backend.send(b"STLS\r\n")
            return (await backend.read_line()).startswith(b"+OK")

        # C{required} sends STLS straight away (its -ERR means "not offered"); C{opportunistic}
        # first asks CAPA whether STLS is offered.
        offered = True
        if leg.tls_mode == "opportunistic":
            offered = await _offers_stls(backend)
        await leg.secure(offered, stls)
        if self.settings.xclient and b"[XCLIENT]" in greeting and self.client.ip:
            backend.send(
                b"XCLIENT ADDR=%s PORT=%d\r\n" % (self.client.ip.encode(), self.client.port)
            )
            answer = await backend.read_line()
            if not answer.startswith(b"+OK"):
                self._log.info("pop3 backend refused XCLIENT: {answer!r}", answer=answer[:200])
        if self.settings.backend_login == "plain" or not _fits_user_pass(user, password):
            backend.send(b"AUTH PLAIN " + encode_plain(user, password) + b"\r\n")
        else:
            backend.send(b"USER " + user + b"\r\n")
            answer = await backend.read_line()
            if not answer.startswith(b"+OK"):
                return Refused(_error_text(answer))
            backend.send(b"PASS " + password + b"\r\n")
        answer = await backend.read_line()
        if answer.startswith(b"+OK"):
            return LoggedIn(answer + b"\r\n")
        if answer.startswith(b"-ERR"):
            return Refused(_error_text(answer))
        raise BackendError(f"unexpected answer to login {answer[:200]!r}")


_IN_USER = {b"PASS", b"CAPA", b"QUIT", b"NOOP"}


async def _offers_stls(backend: LineBackendClient) -> bool:
    """Ask the backend's CAPA (RFC 2449) whether it offers STLS."""
    backend.send(b"CAPA\r\n")
    if not (await backend.read_line()).startswith(b"+OK"):
        return False
    offered = False
    while True:
        line = await backend.read_line()
        if line == b".":
            return offered
        offered = offered or line.strip().upper() == b"STLS"


def _fits_user_pass(user: bytes, password: bytes) -> bool:
    """Whether USER/PASS can carry these credentials (one word, no line breaks)."""
    bad = (b"\r", b"\n", b"\0")
    return (
        bool(user)
        and bool(password)
        and not any(c in user for c in (*bad, b" "))
        and not any(c in password for c in bad)
    )


def _error_text(answer: bytes) -> bytes:
    return answer[4:].lstrip(b" ") or b"Authentication failed"


class POP3FrontFactory(LoginFrontFactory):
    """Builds L{POP3Front}s for one listener from the C{[pop3]} section."""

    def __init__(
        self,
        config: Config,
        listen: ListenConfig,
        router: Router,
        reactor: IGatewayReactor,
        random: Callable[[], int] | None = None,
        *,
        server_tls: ServerTLS | None,
    ) -> None:
        super().__init__(
            config, listen, config.pop3, router, reactor, random, server_tls=server_tls
        )

    @override
    def buildProtocol(self, addr: Any) -> POP3Front:
        return POP3Front(self, self.random)
