"""The SMTP front's backend leg: route a recipient, connect with failover, secure and greet
the backend, tell it who the client is.

The front calls L{BackendLeg.route_recipient} for each RCPT; the first accepted recipient of
a transaction opens (or reuses) the backend connection for its route: connect with failover
(L{connect_smtp_backend}), EHLO, STARTTLS per C{backend_tls} (L{starttls_to_backend}: verified,
with a 4xx instead of any plaintext fallback), XCLIENT, and the login the submission side asks
for. Then MAIL and RCPT go to the backend, pipelined when it offers PIPELINING. The
connection machinery (policy, failover, STARTTLS rules) is L{relaygate.backend}'s.

A connection that knows nothing of its client (no XCLIENT, PROXY header or backend login)
is left in the listener's L{BackendPool} when its session ends idle and clean, and the next
session on the same route starts from it; if it turns out to be gone at MAIL, that session
connects anew once, which is safe because nothing was committed on the lost connection.
"""

from __future__ import annotations

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaygate.addresses import ClientAddress, HostPort
from relaygate.backend.errors import (
    BackendError,
    BackendLost,
    BackendTLSError,
    BackendTLSNotOffered,
)
from relaygate.backend.negotiate import starttls_to_backend
from relaygate.reactor import IGatewayReactor
from relaygate.routing.router import Accept, AuthRequest, Refuse, Router, RouterUnavailable
from relaygate.smtp.auth_replies import R_BACKEND_LOGIN, backend_plain
from relaygate.smtp.backend import SMTPBackendClient, connect_smtp_backend
from relaygate.smtp.backend_pool import BackendPool
from relaygate.smtp.replies import (
    R_AUTH_SERVICE,
    R_BACKEND_DOWN,
    R_BACKEND_LOST,
    R_BACKEND_NO_TLS,
    R_BACKEND_TLS,
    R_OK,
    R_OTHER_BACKEND,
    Reply,
)
from relaygate.smtp.session_facts import ClientFacts, Transaction
from relaygate.smtp.settings import SMTPSettings
from relaygate.smtp.submission import BackendLoginRefused, Submission
from relaygate.smtp.xclient import R_XCLIENT_TOO_LONG, XClientTooLong, xclient_commands


class BackendLeg:
    """One session's connection to its backend, reused across its transactions."""

    _log = Logger()

    def __init__(
        self,
        settings: SMTPSettings,
        router: Router,
        reactor: IGatewayReactor,
        facts: ClientFacts,
        submission: Submission,
        pool: BackendPool | None = None,
    ) -> None:
        self._settings = settings
        self._router = router
        self._reactor = reactor
        self._facts = facts
        self._submission = submission
        self._pool = pool
        self.backend: SMTPBackendClient | None = None
        self._route: tuple[HostPort, ...] | None = None
        self._tls_mode = ""
        self._proxy_protocol = ""
        self._shareable = False
        """The current connection carries nothing of this client: it may serve another."""
        self._kept = False
        """The current connection came from the pool and has not answered this session yet."""

    def drop(self) -> None:
        """Leave the current backend connection (politely if it is idle)."""
        backend, self.backend = self.backend, None
        self._route = None
        if backend is not None:
            backend.close()

    def release(self) -> None:
        """The session ends with no transaction open at the backend: keep the connection for
        another session when it is shareable and idle, else leave it as L{drop} does."""
        backend, route = self.backend, self._route
        if (
            backend is not None
            and route is not None
            and self._pool is not None
            and self._shareable
            and backend.is_idle
            and self._pool.give((route, self._tls_mode), backend)
        ):
            self.backend = None
            self._route = None
            return
        self.drop()

    def _may_share(self, preamble: bytes) -> bool:
        """Whether this session may use a connection another session made (and leave its own):
        not when the backend is to learn who the client is from a PROXY header (C{preamble})
        or a login."""
        if preamble:
            return False
        return not (self._settings.backend_auth == "plain" and self._submission.login is not None)

    async def route_recipient(
        self, tx: Transaction, line: bytes, path: bytes, params: bytes
    ) -> Reply:
        """Ask the router about one recipient and relay MAIL (first time) and RCPT."""
        if tx.broken is not None:
            return tx.broken
        facts = self._facts
        request = AuthRequest(
            protocol="smtp",
            client_ip=facts.ip,
            client_port=facts.port,
            method="none",
            client_host="[UNAVAILABLE]",
            helo=facts.helo or b"",
            mail_from=tx.mail_line,
            rcpt_to=line,
            recipient=path[1:-1],
            tls=facts.tls,
            proxy=facts.proxy,
        )
        try:
            # After AUTH, the login's routing decision serves every transaction (as in nginx).
            login = self._submission.login
            decision = login.decision if login is not None else await self._router.lookup(request)
        except RouterUnavailable as e:
            self._log.warn(
                "router unavailable for {client}: {error}", client=facts.label, error=str(e)
            )
            return R_AUTH_SERVICE
        if isinstance(decision, Refuse):
            if decision.wait:
                await deferLater(self._reactor, decision.wait)
            return _refusal(decision)
        assert isinstance(decision, Accept)
        if tx.route is not None and decision.backends != tx.route:
            return R_OTHER_BACKEND
        rcpt_command = b"RCPT TO:" + path + (b" " + params if params else b"")
        try:
            if tx.backend_mail is None:
                mode = self._settings.backend.tls_mode(decision.backend_tls)
                self._proxy_protocol = decision.backend_proxy_protocol
                mail_command = b"MAIL FROM:" + tx.sender + (b" " + tx.params if tx.params else b"")
                backend = await self.backend_for(decision.backends, mode)
                try:
                    reply = await self._open_transaction(tx, backend, mail_command, rcpt_command)
                except BackendLost as e:
                    if not self._kept:
                        raise
                    # A kept connection the backend closed while it waited: nothing was
                    # committed on it, so this transaction starts again on a new one.
                    self._log.info(
                        "kept connection to {backend} was gone ({error}); connecting anew",
                        backend=backend.info.address,
                        error=str(e),
                    )
                    self._kept = False
                    self.drop()
                    tx.backend_mail = None
                    backend = await self.backend_for(decision.backends, mode, kept=False)
                    reply = await self._open_transaction(tx, backend, mail_command, rcpt_command)
                self._kept = False
                return reply
            if not tx.backend_mail.ok:
                return tx.backend_mail
            assert self.backend is not None
            return await self.backend.command(rcpt_command)
        except XClientTooLong as e:
            # Nothing was sent: a cut login would name someone else (XCLIENT in docs/smtp.md).
            self._log.warn(
                "cannot tell the backend {client}'s login: {error}",
                client=facts.label,
                error=str(e),
            )
            self.drop()
            return R_XCLIENT_TOO_LONG
        except BackendLoginRefused as e:
            self._log.warn(
                "backend login failed for {client}: {error}", client=facts.label, error=str(e)
            )
            self.drop()
            return R_BACKEND_LOGIN
        except BackendTLSError as e:
            self._log.warn(
                "backend TLS failed for {client}: {error}", client=facts.label, error=str(e)
            )
            self.drop()
            return R_BACKEND_NO_TLS if isinstance(e, BackendTLSNotOffered) else R_BACKEND_TLS
        except BackendError as e:
            self._log.warn(
                "backend failed for {client}: {error}", client=facts.label, error=str(e)
            )
            self.drop()
            if tx.route is not None:
                tx.broken = R_BACKEND_LOST
                return R_BACKEND_LOST
            return R_BACKEND_DOWN

    async def _open_transaction(
        self, tx: Transaction, backend: SMTPBackendClient, mail: bytes, rcpt: bytes
    ) -> Reply:
        """MAIL and the first RCPT at C{backend} (pipelined when offered): the RCPT's reply,
        or the MAIL's when that was not a success."""
        tx.route = self._route
        tx.record.backend = backend.info.address
        tx.record.backend_tls = backend.info.tls
        if b"PIPELINING" in backend.extensions:
            mail_reply, rcpt_reply = backend.commands([mail, rcpt])
            # Replies come in order, so the MAIL's has come when the RCPT's does: one wait,
            # not two. The MAIL's outcome is taken as it fires (so a failure of it is never
            # left unhandled), and a failed MAIL is what this raises, as if awaited first.
            mail_outcome: list[Reply | Failure] = []
            mail_reply.addBoth(mail_outcome.append)
            try:
                reply = await rcpt_reply
            finally:
                if not mail_outcome:
                    # Cancelled before either reply came (the client left).
                    mail_reply.cancel()
                first = mail_outcome[0]
                if isinstance(first, Failure):
                    first.raiseException()
                tx.backend_mail = first
        else:
            tx.backend_mail = await backend.command(mail)
            if not tx.backend_mail.ok:
                return tx.backend_mail
            reply = await backend.command(rcpt)
        return reply if tx.backend_mail.ok else tx.backend_mail

    async def backend_for(
        self, route: tuple[HostPort, ...], tls_mode: str, kept: bool = True
    ) -> SMTPBackendClient:
        """The open backend connection for C{route}, a kept one, or a new one: TLS, then
        XCLIENT.

        @param tls_mode: C{backend_tls} for this route (C{none}, C{opportunistic},
            C{required} or C{implicit}).
        @param kept: a connection kept by an earlier session may serve.
        @raise BackendTLSError: TLS was required (or offered) and could not be set up.
        """
        if (
            self.backend is not None
            and self.backend.is_open
            and self._route == route
            and self._tls_mode == tls_mode
        ):
            return self.backend
        self.drop()
        settings = self._settings
        facts = self._facts
        preamble = settings.backend.proxy_preamble(
            lambda: ClientAddress(facts.ip, facts.port, facts.local_ip, facts.local_port),
            self._proxy_protocol,
        )
        shareable = self._may_share(preamble)
        if kept and shareable and self._pool is not None:
            backend = self._pool.take((route, tls_mode))
            if backend is not None:
                assert backend.address is not None
                self._submission.check_backend_login(backend.extensions, backend.address)
                self.backend, self._route, self._tls_mode = backend, route, tls_mode
                self._shareable = self._kept = True
                return backend
        backend, address = await connect_smtp_backend(
            self._reactor,
            route,
            settings.name,
            settings.backend,
            implicit_tls=settings.backend.implicit_tls(tls_mode),
            preamble=preamble,
        )
        self.backend, self._route = backend, route
        backend.address = address
        self._tls_mode = tls_mode
        self._shareable = self._kept = False
        await self._hello(backend)
        await self._secure(backend, address, tls_mode)
        self._submission.check_backend_login(backend.extensions, address)
        told_client = False
        if settings.xclient and b"XCLIENT" in backend.extensions:
            commands = xclient_commands(
                backend.extensions[b"XCLIENT"] or b"", self.xclient_attributes()
            )
            for command in commands:
                # Each XCLIENT resets the backend's session: it greets again and wants EHLO.
                reply = await backend.command(command)
                if reply.code != 220:
                    self._log.error(
                        "backend {backend} refused XCLIENT: {reply}",
                        backend=str(address),
                        reply=reply.summary(),
                    )
                    raise BackendError(f"XCLIENT refused: {reply.summary()}")
                await self._hello(backend)
                told_client = True
        await self._log_in(backend, address)
        self._shareable = shareable and not told_client
        return backend

    async def _secure(self, backend: SMTPBackendClient, address: HostPort, mode: str) -> None:
        """STARTTLS to the backend as C{mode} says (L{starttls_to_backend}), then EHLO again
        (RFC 3207 section 4.2); nothing but EHLO was sent before."""

        async def upgrade(creator: IOpenSSLClientConnectionCreator) -> str | None:
            reply = await backend.start_tls(creator)
            if reply.code != 220:
                return reply.summary()
            await backend.handshake()
            return None

        offered = b"STARTTLS" in backend.extensions
        if await starttls_to_backend(
            mode, address, offered, upgrade, self._settings.backend.tls_for
        ):
            await self._hello(backend)

    async def _hello(self, backend: SMTPBackendClient) -> None:
        name = self._settings.name
        reply = await backend.command(b"EHLO " + name)
        if reply.code == 250:
            backend.parse_extensions(reply)
            return
        reply = await backend.command(b"HELO " + name)
        if not reply.ok:
            raise BackendError(f"HELO refused: {reply.summary()}")
        backend.extensions = {}

    def xclient_attributes(self) -> list[tuple[bytes, bytes]]:
        """What the backend learns about the client through XCLIENT (Postfix's names)."""
        facts = self._facts
        address = f"IPV6:{facts.ip}" if ":" in facts.ip else facts.ip
        return [
            (b"ADDR", address.encode("ascii")),
            (b"PORT", str(facts.port).encode("ascii")),
            (b"NAME", b"[UNAVAILABLE]"),
            (b"PROTO", b"ESMTP" if facts.extended else b"SMTP"),
            (b"HELO", facts.helo or b""),
            *self._submission.xclient_attributes(),
        ]

    async def _log_in(self, backend: SMTPBackendClient, address: HostPort) -> None:
        """C{backend_auth = "plain"}: log in at the backend as the router said.

        @raise BackendLoginRefused: no password to log in with, no AUTH offered, or not 235.
        """
        credentials = self._submission.backend_plain_login(backend.extensions, address)
        if credentials is None:
            return
        reply = await backend.command(backend_plain(*credentials))
        if reply.code != 235:
            raise BackendLoginRefused(f"{address} refused the login: {reply.summary()}")

    async def relay_rset(self, backend: SMTPBackendClient) -> Reply:
        """RSET at the backend (the client reset a transaction the backend knows of)."""
        try:
            return await backend.command(b"RSET")
        except BackendError:
            self.drop()
            return R_OK


def _refusal(decision: Refuse) -> Reply:
    """The client's reply for a router's refusal: C{550 5.7.1 <message>} unless it names a code."""
    text = decision.message.encode("utf-8", "replace")
    code_text = decision.smtp_code.strip()
    code, _, enhanced = code_text.partition(" ")
    if not (len(code) == 3 and code.isdigit() and code[0] in "45"):
        code, enhanced = "550", "5.7.1"
    prefix = (enhanced.strip() + " ").encode("ascii", "replace") if enhanced.strip() else b""
    return Reply(int(code), (prefix + text,))
