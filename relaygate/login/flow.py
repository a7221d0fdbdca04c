"""One IMAP or POP3 login attempt: ask the router, connect to the backend, log in there.

L{LoginFlow.attempt} does the I/O and says how it went as a L{LoginResult}; the front answers
the client and moves its phase. The router's answers follow nginx's mail module
(C{src/mail/ngx_mail_auth_http_module.c}): the rewritten C{Auth-User}/C{Auth-Pass}, a route's
own C{backend_tls} and C{backend_proxy_protocol}, the backends tried in order. The protocol's
backend dialogue (L{relaygate.imap}, L{relaygate.pop3}) gets a L{LoginLeg}: the connection,
and L{LoginLeg.secure} for STARTTLS/STLS as C{backend_tls} says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger

from relaygate.addresses import ClientAddress, HostPort
from relaygate.backend.connect import connect_with_failover
from relaygate.backend.negotiate import starttls_to_backend
from relaygate.backend.policy import BackendPolicy
from relaygate.login.line_client import LineBackendClient
from relaygate.login.settings import LoginSettings
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Accept, AuthRequest, Refuse, Router
from relaygate.text import printable


@dataclass(frozen=True)
class LoggedIn:
    """The backend accepted the login; C{reply} is what the client gets as the answer."""

    reply: bytes


@dataclass(frozen=True)
class Refused:
    """The backend refused the credentials; C{text} is its reason (without status word)."""

    text: bytes


LoginOutcome = LoggedIn | Refused


@dataclass
class LoginLeg:
    """The backend connection of one login, as the protocol's login dialogue sees it."""

    client: LineBackendClient
    address: HostPort
    tls_mode: str
    """This login's C{backend_tls}: the route's own, else the protocol section's."""
    policy: BackendPolicy

    async def secure(self, offered: bool, ask: Callable[[], Awaitable[bool]]) -> bool:
        """STARTTLS/STLS as C{tls_mode} says; C{True} once TLS is up.

        @param offered: whether the backend advertised STARTTLS/STLS.
        @param ask: sends the command and says whether the backend answered OK; nothing else
            may be read between that answer and L{LineBackendClient.start_tls}.
        @raise relaygate.backend.errors.BackendTLSError: see L{starttls_to_backend}. Nothing
            with credentials has been sent by then.
        """

        async def upgrade(creator: IOpenSSLClientConnectionCreator) -> str | None:
            if not await ask():
                return ""
            await self.client.start_tls(creator)
            return None

        return await starttls_to_backend(
            self.tls_mode, self.address, offered, upgrade, self.policy.tls_for
        )


BackendDialogue = Callable[[LoginLeg, bytes, bytes, bytes], Awaitable[LoginOutcome]]
"""Logs in at the backend: C{(leg, tag, user, password)}; says whether the backend accepted."""


@dataclass(frozen=True)
class RouterRefused:
    """The router refused the login (C{decision.wait}: the session may try again after it)."""

    decision: Refuse


@dataclass(frozen=True)
class BackendRefused:
    """The backend refused the credentials; C{text} is its reason."""

    text: bytes


@dataclass(frozen=True)
class Unavailable:
    """The router or the backend failed (logged): the client gets an internal error."""


@dataclass(frozen=True)
class Relay:
    """Logged in: send C{outcome.reply} and splice the client with C{backend}."""

    backend: LineBackendClient
    outcome: LoggedIn


LoginResult = RouterRefused | BackendRefused | Unavailable | Relay


class LoginFlow:
    """Login attempts of one session; remembers the last backend for the access log."""

    _log = Logger()

    def __init__(
        self,
        protocol: str,
        settings: LoginSettings,
        router: Router,
        reactor: IGatewayReactor,
        dialogue: BackendDialogue,
        closed: Callable[[], bool],
    ) -> None:
        """@param closed: whether the session has ended (a cancelled lookup is then no error)."""
        self._protocol = protocol
        self._settings = settings
        self._router = router
        self._reactor = reactor
        self._dialogue = dialogue
        self._closed = closed
        self.user = b""
        """Who the session logs in as (the router's rewrite once it answered)."""
        self.backend: LineBackendClient | None = None
        """The backend connection while a login uses it."""
        self.backend_address = ""
        self.backend_tls = ""

    async def attempt(
        self, request: AuthRequest, tag: bytes, client: ClientAddress
    ) -> LoginResult:
        """Route C{request}, connect to its backend and log in; how it went.

        @param client: where the client connected from and to (for a PROXY header).
        """
        self.user = request.user
        try:
            lookup = self._router.lookup(request)
            lookup.addTimeout(self._settings.auth_timeout, self._reactor)
            decision = await lookup
        except CancelledError:
            if self._closed():
                raise
            self._log.warn("{protocol} router lookup timed out", protocol=self._protocol)
            return Unavailable()
        except Exception as e:
            self._log.warn(
                "{protocol} router unavailable: {error}", protocol=self._protocol, error=e
            )
            return Unavailable()
        if isinstance(decision, Refuse):
            self._log.info(
                "{protocol} login refused by the router for {user!r}: {message!r}",
                protocol=self._protocol,
                user=printable(request.user),
                message=decision.message,
            )
            return RouterRefused(decision)
        return await self._accepted(request, tag, client, decision)

    async def _accepted(
        self, request: AuthRequest, tag: bytes, client: ClientAddress, decision: Accept
    ) -> LoginResult:
        user = decision.user if decision.user is not None else request.user
        password = decision.password
        if password is None and request.method in ("plain", "login"):
            password = request.password
        if (
            password is None
            or not decision.backends
            or (not user and request.method == "external")
        ):
            # After EXTERNAL the user comes from the router (Auth-User) when the client
            # named none.
            self._log.error(
                "{protocol} router accepted {user!r} without a user, password or backend",
                protocol=self._protocol,
                user=printable(request.user),
            )
            return Unavailable()
        self.user = user
        policy = self._settings.backend
        mode = policy.tls_mode(decision.backend_tls)
        try:
            backend, address = await connect_with_failover(
                self._reactor,
                decision.backends,
                policy.connect_timeout,
                lambda: LineBackendClient(self._reactor, policy.reply_timeout),
                policy.implicit_tls(mode),
                policy.proxy_preamble(client, decision.backend_proxy_protocol),
            )
        except CancelledError:
            raise
        except Exception as e:
            self._log.warn(
                "{protocol} no backend reachable: {error}", protocol=self._protocol, error=e
            )
            return Unavailable()
        self.backend = backend
        self.backend_address = str(address)
        try:
            outcome = await self._dialogue(
                LoginLeg(backend, address, mode, policy), tag, user, password
            )
        except CancelledError:
            raise
        except Exception as e:
            self._log.warn(
                "{protocol} backend {backend} login failed: {error}",
                protocol=self._protocol,
                backend=self.backend_address,
                error=e,
            )
            self.backend_tls = backend.tls
            self._drop_backend()
            return Unavailable()
        self.backend_tls = backend.tls
        if isinstance(outcome, Refused):
            self._drop_backend()
            self._log.info(
                "{protocol} backend {backend} refused {user!r}: {text!r}",
                protocol=self._protocol,
                backend=self.backend_address,
                user=printable(user),
                text=printable(outcome.text),
            )
            return BackendRefused(outcome.text)
        return Relay(backend, outcome)

    def _drop_backend(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
