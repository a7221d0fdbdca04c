"""The IMAP front: pre-auth commands, login at the backend, then a byte-for-byte relay.

Before login the front answers CAPABILITY, NOOP, ID, LOGOUT, STARTTLS, LOGIN and AUTHENTICATE
(PLAIN, LOGIN, CRAM-MD5, EXTERNAL, with SASL-IR) itself, with nginx's replies where nginx has
them (C{src/mail/ngx_mail_imap_handler.c}). At the backend it sends C{ID} with the client's
address and logs in with C{LOGIN} (quoted strings, or literals for what quoting cannot carry)
or C{AUTHENTICATE PLAIN} when the backend says C{LOGINDISABLED} or the config asks for it.
The client's tagged OK carries the backend's post-login capabilities.

STARTTLS (RFC 3501 section 6.2.1) is offered on C{starttls} and C{starttls-required}
listeners; the latter says C{LOGINDISABLED} until TLS is up. To the backend, C{backend_tls}
sends C{STARTTLS} before anything that identifies the client
(L{relaygate.login.flow.LoginLeg.secure}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typing_extensions import override

from relaygate.backend.errors import BackendError
from relaygate.config.model import Config
from relaygate.config.server import ListenConfig
from relaygate.imap_syntax import (
    Arg,
    Command,
    Continue,
    Invalid,
    astring,
    parse_command,
    parse_line,
    quote,
    response_code,
)
from relaygate.login.flow import LoggedIn, LoginLeg, LoginOutcome, Refused
from relaygate.login.front import LoginFront
from relaygate.login.line_client import LineBackendClient
from relaygate.login.settings import LoginFrontFactory
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Router
from relaygate.sasl import MECHANISMS, Credentials, Failed, encode_plain
from relaygate.tls.server import ServerTLS


class IMAPFront(LoginFront):
    """One client's IMAP session; see the module docstring."""

    protocol_name = "imap"

    def __init__(
        self,
        factory: IMAPFrontFactory,
        random: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(factory.settings, factory.router, factory.reactor, random)
        self._capabilities = factory.capabilities
        self._max_literal = factory.max_literal_size
        self._send_id = factory.send_id
        self._continued = 0

    # Capabilities and simple replies.

    def _login_disabled(self) -> bool:
        return self.settings.tls_mode == "starttls-required" and not self.secure

    def _offered(self, method: str) -> bool:
        """Whether mechanism C{method} is on offer now: EXTERNAL needs a verified certificate."""
        if method not in self.settings.auth:
            return False
        return method != "external" or self.has_verified_certificate()

    def capability_line(self) -> bytes:
        """The pre-auth capability list, as nginx builds it from the config and TLS state."""
        caps = list(self._capabilities)
        if self._login_disabled():
            caps += [b"STARTTLS", b"LOGINDISABLED"]
            return b" ".join(caps)
        caps += [
            b"AUTH=" + name.encode("ascii")
            for name, method in MECHANISMS.items()
            if self._offered(method)
        ]
        if self.settings.tls_mode in ("starttls", "starttls-required") and not self.secure:
            caps.append(b"STARTTLS")
        return b" ".join(caps)

    @override
    def greeting(self) -> bytes:
        name = self.settings.server_name.encode("ascii", "replace")
        return b"* OK [CAPABILITY %s] %s ready\r\n" % (self.capability_line(), name)

    @override
    def reply_refused(self, tag: bytes, text: bytes) -> None:
        self.write(b"%s NO %s\r\n" % (tag, text))

    @override
    def reply_internal_error(self) -> None:
        self.write(b"* BAD internal server error\r\n")

    @override
    def reply_timeout(self) -> None:
        self.write(b"* BYE Disconnected for inactivity\r\n")

    @override
    def reply_sasl_failed(self, tag: bytes, failed: Failed) -> None:
        """RFC 3501 6.2.2: a cancelled or undecodable exchange gets BAD."""
        if failed is Failed.CANCELLED:
            self._bad(tag, b"authentication cancelled")
        else:
            self._bad(tag)

    @override
    def generic_refusal(self) -> bytes:
        return b"[AUTHENTICATIONFAILED] Authentication failed"

    def _bad(self, tag: bytes, reason: bytes = b"invalid command", fatal: bool = False) -> None:
        self.invalid(b"%s BAD %s\r\n" % (tag, reason), fatal)

    def _ok(self, tag: bytes) -> None:
        self.write(b"%s OK completed\r\n" % tag)

    # Input.

    @override
    def step(self) -> bool:
        if self.in_sasl:
            return self._sasl_line()
        parsed = parse_command(
            bytes(self.buffer), self._continued, self.settings.max_line_length, self._max_literal
        )
        if parsed is None:
            return False
        if isinstance(parsed, Continue):
            self._continued = parsed.offset
            self.write(b"+ OK\r\n")
            return True
        del self.buffer[: parsed.size]
        self._continued = 0
        if isinstance(parsed, Invalid):
            self._log.debug("imap syntax error: {reason}", reason=parsed.reason)
            self._bad(parsed.tag, parsed.reason.encode("ascii"), parsed.fatal)
            return True
        handler = getattr(self, "do_" + parsed.name.decode("ascii", "replace"), None)
        if handler is None:
            self._bad(parsed.tag)
        else:
            handler(parsed)
        return True

    def do_CAPABILITY(self, command: Command) -> None:
        if command.args:
            return self._bad(command.tag)
        self.write(b"* CAPABILITY %s\r\n" % self.capability_line())
        self._ok(command.tag)

    def do_NOOP(self, command: Command) -> None:
        self._ok(command.tag)

    def do_LOGOUT(self, command: Command) -> None:
        self.write(b"* BYE Logging out\r\n")
        self._ok(command.tag)
        self.close("logout")

    def do_ID(self, command: Command) -> None:
        """RFC 2971: the client's ID is accepted; the gateway does not identify itself."""
        if len(command.args) != 1 or not (
            isinstance(command.args[0], tuple) or command.args[0].upper() == b"NIL"
        ):
            return self._bad(command.tag)
        self.write(b"* ID NIL\r\n")
        self._ok(command.tag)

    def do_STARTTLS(self, command: Command) -> None:
        """RFC 3501 6.2.1; BAD where the listener offers no STARTTLS or TLS is already up."""
        reply = b"%s OK Begin TLS negotiation now\r\n" % command.tag
        if command.args or not self.begin_tls(reply):
            self._bad(command.tag)

    @override
    def reset_session(self) -> None:
        self._continued = 0

    def do_LOGIN(self, command: Command) -> None:
        args = command.args
        if len(args) != 2 or not all(isinstance(a, bytes) for a in args) or not args[0]:
            return self._bad(command.tag)
        if self._login_disabled():
            self.write(b"%s NO [PRIVACYREQUIRED] Use STARTTLS first\r\n" % command.tag)
            return
        user, password = _as_bytes(args[0]), _as_bytes(args[1])
        self.start_login(command.tag, Credentials("plain", user, password))

    def do_AUTHENTICATE(self, command: Command) -> None:
        args = command.args
        if not 1 <= len(args) <= 2 or not all(isinstance(a, bytes) for a in args):
            return self._bad(command.tag)
        if self._login_disabled():
            self.write(b"%s NO [PRIVACYREQUIRED] Use STARTTLS first\r\n" % command.tag)
            return
        mechanism = MECHANISMS.get(_as_bytes(args[0]).upper().decode("ascii", "replace"))
        if mechanism is None or mechanism not in self.settings.auth:
            return self._bad(command.tag)
        if not self._offered(mechanism):
            self.invalid(b"%s NO EXTERNAL needs a verified client certificate\r\n" % command.tag)
            return
        initial = _as_bytes(args[1]) if len(args) == 2 else None
        self.start_sasl(command.tag, mechanism, initial)

    def _sasl_line(self) -> bool:
        parsed = parse_line(bytes(self.buffer), self.settings.max_line_length)
        if parsed is None:
            return False
        if isinstance(parsed, Invalid):
            del self.buffer[:]
            self._bad(self.abandon_sasl(), b"line too long", fatal=True)
            return True
        line, size = parsed
        del self.buffer[:size]
        self.sasl_line(line)
        return True

    # The backend.

    @override
    async def backend_login(
        self, leg: LoginLeg, tag: bytes, user: bytes, password: bytes
    ) -> LoginOutcome:
        backend = leg.client
        session = _BackendSession(backend)
        greeting = await backend.read_line()
        if not greeting.startswith(b"* OK"):
            raise BackendError(f"unexpected greeting {greeting[:200]!r}")
        code, _ = response_code(greeting[5:])
        caps = _capabilities_from_code(code)
        if caps is None:
            status, _, untagged = await session.command(b"CAPABILITY")
            caps = _capabilities_from_untagged(untagged) or set()

        async def starttls() -> bool:
            status, _, _ = await session.command(b"STARTTLS")
            return status == b"OK"

        if await leg.secure(b"STARTTLS" in caps, starttls):
            # RFC 3501 6.2.1: what the server said before TLS is forgotten; ask again.
            _, _, untagged = await session.command(b"CAPABILITY")
            caps = _capabilities_from_untagged(untagged) or set()
        if self._send_id and b"ID" in caps:
            await session.command(b"ID " + _id_list(self.client))
        if self.settings.xclient and b"XCLIENT" in caps:
            await session.command(
                b"XCLIENT ADDR=%s PORT=%d" % (self.client.ip.encode("ascii"), self.client.port)
            )
        if b"LOGINDISABLED" in caps or self.settings.backend_login == "plain":
            if b"AUTH=PLAIN" not in caps:
                raise BackendError("backend offers neither LOGIN nor AUTHENTICATE PLAIN")
            response = encode_plain(user, password)
            if b"SASL-IR" in caps:
                status, text, untagged = await session.command(b"AUTHENTICATE PLAIN " + response)
            else:
                status, text, untagged = await session.command(
                    response, continuations=[b"AUTHENTICATE PLAIN\r\n"]
                )
        else:
            # LOGIN's arguments split the command at each literal: every piece but the last
            # ends with a literal's announcement, and the next piece starts with its bytes.
            literal_plus = b"LITERAL+" in caps
            current = b"LOGIN"
            pieces: list[bytes] = []
            for value in (user, password):
                text_part, literal = astring(value, literal_plus)
                current += b" " + text_part
                if literal is not None:
                    pieces.append(current + b"\r\n")
                    current = literal
            status, text, untagged = await session.command(
                current, continuations=pieces, wait_for_plus=not literal_plus
            )
        if status != b"OK":
            return Refused(text)
        code, rest = response_code(text)
        post_caps = _capabilities_from_code(code) or _capabilities_from_untagged(untagged)
        if post_caps is None:
            _, _, untagged = await session.command(b"CAPABILITY")
            post_caps = _capabilities_from_untagged(untagged) or set()
        ordered = _ordered(code, untagged, post_caps)
        return LoggedIn(b"%s OK [CAPABILITY %s] %s\r\n" % (tag, ordered, rest or b"Logged in"))


class _BackendSession:
    """Tagged commands to a backend before login, one at a time."""

    def __init__(self, backend: LineBackendClient) -> None:
        self._backend = backend
        self._counter = 0

    async def command(
        self, line: bytes, continuations: list[bytes] | None = None, wait_for_plus: bool = True
    ) -> tuple[bytes, bytes, list[bytes]]:
        """Send C{tag line}; return the tagged status, its text and the untagged lines.

        With C{continuations}, C{line} is the last piece of the command: each continuation is
        sent first, after the server's C{+} when C{wait_for_plus} (synchronizing literals,
        SASL responses).
        """
        self._counter += 1
        tag = b"R%d" % self._counter
        pieces = list(continuations or [])
        if pieces:
            # The first piece starts the command; the last, C{line}, ends it.
            first, *rest = pieces
            self._backend.send(tag + b" " + first)
            for piece in [*rest, line + b"\r\n"]:
                if wait_for_plus:
                    await self._wait_for_continuation(tag)
                self._backend.send(piece)
        else:
            self._backend.send(tag + b" " + line + b"\r\n")
        return await self._response(tag)

    async def _wait_for_continuation(self, tag: bytes) -> None:
        while True:
            line = await self._backend.read_line()
            if line.startswith(b"+"):
                return
            if line.startswith(tag + b" "):
                raise BackendError(f"backend refused a literal: {line[:200]!r}")
            if line.startswith(b"* BYE"):
                raise BackendError(f"backend said {line[:200]!r}")

    async def _response(self, tag: bytes) -> tuple[bytes, bytes, list[bytes]]:
        untagged: list[bytes] = []
        while True:
            line = await self._read_full_line()
            if line.startswith(tag + b" "):
                status, _, text = line[len(tag) + 1 :].partition(b" ")
                return status.upper(), text, untagged
            if line.startswith(b"* BYE"):
                raise BackendError(f"backend said {line[:200]!r}")
            if line.startswith(b"* "):
                untagged.append(line[2:])
            elif line.startswith(b"+"):
                # A challenge we did not expect (AUTHENTICATE without SASL-IR): cancel it.
                self._backend.send(b"*\r\n")
            else:
                raise BackendError(f"unexpected backend line {line[:200]!r}")

    async def _read_full_line(self) -> bytes:
        """A response line with any literals it announces read into it (RFC 3501 4.3)."""
        line = await self._backend.read_line()
        while line.endswith(b"}") and b"{" in line:
            digits = line[line.rindex(b"{") + 1 : -1]
            if not digits.isdigit() or int(digits) > 65536:
                break
            line += b"\r\n" + await self._backend.read_bytes(int(digits))
            line += await self._backend.read_line()
        return line


def _as_bytes(arg: Arg) -> bytes:
    assert isinstance(arg, bytes)
    return arg


def _capabilities_from_code(code: bytes) -> set[bytes] | None:
    words = code.split()
    if words and words[0].upper() == b"CAPABILITY":
        return {w.upper() for w in words[1:]}
    return None


def _capabilities_from_untagged(untagged: list[bytes]) -> set[bytes] | None:
    for line in untagged:
        words = line.split()
        if words and words[0].upper() == b"CAPABILITY":
            return {w.upper() for w in words[1:]}
    return None


def _ordered(code: bytes, untagged: list[bytes], caps: set[bytes]) -> bytes:
    """The capability list in the backend's own order and spelling."""
    for source in [code, *untagged]:
        words = source.split()
        if words and words[0].upper() == b"CAPABILITY":
            return b" ".join(words[1:])
    return b" ".join(sorted(caps))


def _id_list(client: Any) -> bytes:
    """RFC 2971 ID parameters carrying the client's address (Dovecot's ``x-originating-*``)."""
    fields = [
        (b"x-originating-ip", client.ip),
        (b"x-originating-port", str(client.port)),
        (b"x-connected-ip", client.local_ip),
        (b"x-connected-port", str(client.local_port)),
    ]
    return (
        b"("
        + b" ".join(quote(k) + b" " + quote(v.encode("ascii", "replace")) for k, v in fields)
        + b")"
    )


class IMAPFrontFactory(LoginFrontFactory):
    """Builds L{IMAPFront}s for one listener from the C{[imap]} section."""

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
            config, listen, config.imap, router, reactor, random, server_tls=server_tls
        )
        self.max_literal_size = config.imap.max_literal_size
        self.send_id = config.imap.send_id

    @override
    def buildProtocol(self, addr: Any) -> IMAPFront:
        return IMAPFront(self, self.random)
