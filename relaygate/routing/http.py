"""The nginx ``auth_http`` router: ask an HTTP service which backend serves a session.

The request headers and their escaping (built in L{relaygate.routing.http_request}) and the
reading of the answer follow nginx's ``src/mail/ngx_mail_auth_http_module.c``, so an auth
service written for nginx works unchanged.
On top of that: one keep-alive connection pool, ``https://`` URLs, several URLs with failover, and
HTTP 5xx treated as a temporary failure. ``docs/auth-http.md`` describes the protocol.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from http.cookiejar import CookieJar
from typing import Any, Final

from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.application.service import IService
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent  # raised by Agent, not re-exported
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from typing_extensions import override

from relaygate.addresses import HostPort
from relaygate.config.auth import AuthConfig
from relaygate.routing.deadlines import Deadlines
from relaygate.routing.http_client import HTTPPoolService, new_auth_client
from relaygate.routing.http_request import (
    AUTH_METHODS,
    UnsendableError,
    configured_header,
    escape_auth_value,
    request_headers,
)
from relaygate.routing.router import Accept, AuthRequest, Decision, Refuse, RouterUnavailable

# Methods after which nginx has no client password to log in with (it clears the APOP/CRAM-MD5
# digest once Auth-Salt is sent), so an OK answer must carry Auth-Pass for IMAP and POP3.
_NEEDS_AUTH_PASS: Final = frozenset((b"apop", b"cram-md5", b"external"))

# Text shown to a client (Auth-Status) must not carry control characters either.
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS: Final = re.compile(rb"[0-9]+")
_SMTP_CODE: Final = re.compile(rb"[2-5][0-9][0-9](?: [\x21-\x7e]+)*")
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

# Static headers that would change how the request is framed on the connection.
_FRAMING_HEADERS: Final = frozenset(
    ("content-length", "transfer-encoding", "connection", "expect", "upgrade")
)

_MAX_BODY: Final = 64 * 1024
_MAX_VALUE: Final = 4096
_MAX_MESSAGE: Final = 1024
_MAX_WAITS: Final = 10
# What a broken, closed or unreachable service (or a TLS failure under it) raises: the next URL
# may do better. Anything else is a bug here, and asking another URL would only repeat it.
_TRANSPORT_ERRORS: Final = (
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
    RequestNotSent,
    ConnectionClosed,
    DNSLookupError,
    OSError,
)


@lru_cache(maxsize=1024)
def parse_auth_server(text: str) -> str | None:
    """The backend host in an ``Auth-Server`` value (IPv4, IPv6 or host name), or None if invalid.

    nginx accepts only IP addresses here; a host name is relaygate's extension. An IPv6 address
    may come with or without brackets and is returned without them. Cached: an auth service
    names the same few backends again and again.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if ":" in text or len(text) > 253:
        return None
    labels = text.removesuffix(".").split(".")
    # An all-digit last label would make "1.2.3" a name that resolvers read as an address.
    if labels[-1].isdigit() or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return text


class _PreparedURL(EncodedURL):
    """A URL parsed and encoded once, whose C{to_uri} and C{to_text} cost nothing.

    treq calls C{url.to_uri().to_text()} on every request; for our fixed URLs that is about
    60 microseconds of IDNA checks per lookup, which the pre-computed text avoids.
    """

    _text: str

    @classmethod
    def prepare(cls, text: str) -> _PreparedURL:
        """Parse C{text} once; raise C{ValueError} if it is not an http(s) URL with a host."""
        uri = EncodedURL.from_text(text).to_uri()
        if uri.scheme not in ("http", "https") or not uri.host:
            raise ValueError(f"{text!r} is not an http:// or https:// URL")
        prepared = cls(
            scheme=uri.scheme,
            host=uri.host,
            path=uri.path or ("",),
            query=uri.query,
            fragment=uri.fragment,
            port=uri.port,
            rooted=True,
            userinfo=uri.userinfo,
            uses_netloc=True,
        )
        prepared._text = EncodedURL.to_text(prepared, with_password=True)
        return prepared

    @override
    def to_uri(self) -> _PreparedURL:
        return self

    @override
    def to_text(self, with_password: bool = False) -> str:
        return self._text


@dataclass(frozen=True)
class _Target:
    """One configured auth URL, with everything a request to it needs computed up front."""

    url: _PreparedURL
    text: str
    host: bytes


def _target(text: str, host_override: bytes | None) -> _Target:
    url = _PreparedURL.prepare(text)
    # nginx sends the URL's host without the port (ngx_parse_url's u.host).
    host = f"[{url.host}]" if ":" in url.host else url.host
    return _Target(url=url, text=text, host=host_override or host.encode("ascii"))


class _InvalidAnswerError(Exception):
    """The auth service answered, but not with something relaygate can act on."""

    def __init__(self, problem: str, header: str = "", value: bytes = b"") -> None:
        super().__init__(problem)
        self.problem = problem
        self.header = header
        self.value = value


class _BodyDiscarder(Protocol):
    """Read and drop a response body (nginx ignores it) so the connection can serve again.

    A body longer than C{limit} is not worth reading: the connection is dropped instead.
    C{ended} tells whether the body has ended (however it ended: the answer is in the
    headers); L{wait} gives a L{Deferred} for that, whose cancelling drops the connection too.
    """

    def __init__(self, response: IResponse, limit: int) -> None:
        self._response = response
        self._left = limit
        self._done: Deferred[IResponse] | None = None
        self.ended = False

    def wait(self) -> Deferred[IResponse]:
        """A Deferred that fires with the response when its body has ended."""
        self._done = Deferred(self._stop)
        return self._done

    def _stop(self, _: Deferred[IResponse]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    @override
    def dataReceived(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0 and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended = True
        # Let go of the Deferred (its canceller is a method of this protocol: a cycle).
        done, self._done = self._done, None
        if done is not None and not done.called:
            done.callback(self._response)


def _read_body(response: IResponse) -> IResponse | Deferred[IResponse]:
    """Discard C{response}'s body; C{response} once the body has ended.

    A body that has already ended (the usual empty one) needs no L{Deferred} to wait for.
    """
    discarder = _BodyDiscarder(response, _MAX_BODY)
    response.deliverBody(discarder)
    if discarder.ended:
        return response
    return discarder.wait()


class HTTPRouter:
    """Ask an nginx-compatible ``auth_http`` service, trying the configured URLs in order.

    Connection failures, timeouts, unparseable responses and HTTP 5xx move on to the next URL;
    when none is left the lookup fails with L{RouterUnavailable}. An answer that parses but makes
    no sense (no Auth-Server, a bad Auth-Port ...) fails at once, as in nginx.
    """

    _log = Logger()

    def __init__(self, config: AuthConfig, client: HTTPClient, clock: IReactorTime) -> None:
        if not config.http:
            raise ValueError("HTTPRouter needs at least one [auth] http URL")
        self._client = client
        self._clock = clock
        self._timeout = config.timeout
        # Each URL attempt has [auth] timeout seconds to answer, on one timer for them all.
        self._deadlines = Deadlines(clock, config.timeout)
        self._pass_client_cert = config.pass_client_cert
        host_override: bytes | None = None
        static: list[tuple[bytes, bytes]] = []
        for name, value in config.headers:
            lowered = name.lower()
            if lowered == "host":
                # One Host header only: a configured one replaces the URL's host.
                host_override = configured_header(name, value)[1]
            elif lowered in _FRAMING_HEADERS:
                raise ValueError(f"[auth] headers: {name} would break the HTTP request")
            else:
                static.append(configured_header(name, value))
        self._static = tuple(static)
        self._targets = tuple(_target(url, host_override) for url in config.http)
        # Passed as treq's per-request cookies so it does not build an empty jar every time.
        self._no_cookies = CookieJar()

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        """Ask the auth service about C{request}; L{RouterUnavailable} if it cannot say."""
        try:
            headers = request_headers(
                request, self._targets[0].host, self._static, self._pass_client_cert
            )
        except UnsendableError as e:
            self._log.error(
                "auth_http request not sent: {header} would carry {value!r}",
                header=e.header,
                value=e.value,
                problem="unsendable",
            )
            return fail(RouterUnavailable(f"auth_http: {e.header} cannot be sent"))
        lookup = _Lookup(self, headers, request)
        result = lookup.result
        lookup.ask()
        return result

    def _log_failed(self, index: int, target: _Target, failure: Failure) -> bool:
        """Log why asking C{target} failed; return whether the next URL may do better."""
        level = LogLevel.warn if index < len(self._targets) - 1 else LogLevel.error
        error = failure.value
        if isinstance(error, TimeoutError):
            self._log.emit(
                level,
                "auth_http {url} timed out after {timeout} seconds",
                url=target.text,
                timeout=self._timeout,
                problem="timeout",
            )
        elif isinstance(error, ConnectError):
            self._log.emit(
                level,
                "auth_http {url} unreachable: {error}",
                url=target.text,
                error=str(error),
                problem="unreachable",
            )
        elif isinstance(error, _TRANSPORT_ERRORS):
            self._log.emit(
                level,
                "auth_http {url} sent no valid HTTP response: {error!r}",
                url=target.text,
                error=_describe(error),
                problem="bad-response",
            )
        else:
            # A bug: log it with its traceback and give the client the temporary failure,
            # without trying the next URL, which would run the same code.
            self._log.failure("auth_http lookup at {url} failed", failure, url=target.text)
            return False
        return True

    def _answered(
        self, index: int, target: _Target, response: IResponse, request: AuthRequest
    ) -> Decision | float | None:
        """Read C{target}'s answer: a decision, seconds to WAIT, or None to ask the next URL.

        @raise RouterUnavailable: the answer is unusable (the next URL would say the same).
        """
        if response.code >= 500:
            self._log.emit(
                LogLevel.warn if index < len(self._targets) - 1 else LogLevel.error,
                "auth_http {url} answered HTTP {code}",
                url=target.text,
                code=response.code,
                problem="http-5xx",
            )
            return None
        try:
            return self._decide(target, response.headers, request)
        except _InvalidAnswerError as e:
            self._log.error(
                "auth_http {url} sent an unusable answer: {problem} {header} {value!r}",
                url=target.text,
                problem=e.problem,
                header=e.header,
                value=e.value,
            )
            raise RouterUnavailable(f"auth_http: {e.problem}") from None

    def _decide(self, target: _Target, headers: Headers, request: AuthRequest) -> Decision | float:
        """Read an answer as nginx's ngx_mail_auth_http_process_headers does.

        @return: the decision, or the seconds to wait before asking again (``WAIT``).
        @raise _InvalidAnswerError: the answer cannot be acted on.
        """
        # No Auth-Status at all is not an error in nginx: an answer that names Auth-Server and
        # Auth-Port routes (the seed's auth block sends only those two headers).
        statuses = headers.getRawHeaders(b"Auth-Status", ())
        message: bytes | None = None
        wait = False
        for status in statuses:
            if status == b"OK":
                continue
            if status == b"WAIT":
                wait = True
                continue
            if not status or len(status) > _MAX_MESSAGE or _CONTROL.search(status):
                raise _InvalidAnswerError("invalid", "Auth-Status", status)
            # As in nginx, a failure text wins over OK and WAIT, and the last one is shown.
            message = status
        seconds = 0
        for value in headers.getRawHeaders(b"Auth-Wait", ()):
            # ngx_atoi: digits only; anything else is ignored.
            if _DIGITS.fullmatch(value):
                seconds = int(value)
        if message is not None:
            code = _last(headers, b"Auth-Error-Code")
            if code is not None and not _SMTP_CODE.fullmatch(code):
                raise _InvalidAnswerError("invalid", "Auth-Error-Code", code)
            return Refuse(
                message=message.decode("utf-8", "replace"),
                smtp_code=code.decode("ascii") if code is not None else "",
                wait=float(seconds) if seconds else None,
            )
        if wait:
            return float(seconds)

        server = _last(headers, b"Auth-Server")
        port = _last(headers, b"Auth-Port")
        if not server or not port:
            raise _InvalidAnswerError("did not send server or port")
        password = _last(headers, b"Auth-Pass")
        user = _last(headers, b"Auth-User")
        if (
            password is None
            and request.protocol != "smtp"
            and AUTH_METHODS.get(request.method) in _NEEDS_AUTH_PASS
        ):
            raise _InvalidAnswerError("did not send password")
        host = parse_auth_server(server.decode("latin-1"))
        if host is None:
            raise _InvalidAnswerError("invalid server address", "Auth-Server", server)
        if not _DIGITS.fullmatch(port) or not 0 < int(port) < 65536:
            raise _InvalidAnswerError("invalid server port", "Auth-Port", port)
        for name, field in ((b"Auth-User", user), (b"Auth-Pass", password)):
            if field is not None and (len(field) > _MAX_VALUE or b"\0" in field):
                # Logged by name only: an Auth-Pass value must never reach a log.
                raise _InvalidAnswerError("invalid", name.decode("ascii"))
        return Accept(
            backends=(HostPort(host, int(port)),),
            user=user,
            password=password,
            details={"auth_url": target.text},
        )


class _Lookup:
    """One lookup in flight: the URLs in turn, ``Auth-Status: WAIT`` rounds, cancellation.

    A plain chain of callbacks rather than nested coroutines: each coroutine level was one more
    L{Deferred} and generator hop per lookup, measurable at thousands of lookups a second.
    Cancelling L{result} (the client left) cancels the request in flight or the wait, and
    asks no further URL.
    """

    __slots__ = (
        "_cancelled",
        "_deadline",
        "_delayed",
        "_headers",
        "_host_index",
        "_index",
        "_pending",
        "_request",
        "_result",
        "_rounds",
        "_router",
        "_timed_out",
    )

    def __init__(self, router: HTTPRouter, headers: Headers, request: AuthRequest) -> None:
        self._router = router
        self._headers = headers
        self._request = request
        self._index = 0
        # The URL whose host the Host header carries.
        self._host_index = 0
        self._rounds = 0
        self._cancelled = False
        self._timed_out = False
        self._deadline = -1
        self._pending: Deferred[Any] | None = None
        self._delayed: IDelayedCall | None = None
        self._result: Deferred[Decision] | None = Deferred(self._cancel)

    @property
    def result(self) -> Deferred[Decision]:
        """The decision's Deferred; ask for it before L{ask}."""
        assert self._result is not None
        return self._result

    def _fire(self, outcome: Decision | Failure | Exception) -> None:
        """Fire the result once, and let go of it: its canceller refers back to this lookup,
        and a cycle would leave both to the garbage collector, once per lookup."""
        result, self._result = self._result, None
        if result is None:
            return
        if isinstance(outcome, (Failure, Exception)):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def ask(self) -> None:
        """One HTTP request to the current URL, headers and body, within C{[auth] timeout}."""
        router = self._router
        index = self._index
        target = router._targets[index]
        if index != self._host_index:
            self._headers.setRawHeaders(b"Host", (target.host,))
            self._host_index = index
        try:
            sent: Deferred[Any] = router._client.request(
                "GET",
                target.url,
                headers=self._headers,
                allow_redirects=False,
                unbuffered=True,
                cookies=router._no_cookies,
            )
        except Exception:
            sent = fail()
        sent.addCallback(_read_body)
        self._pending = sent
        self._deadline = router._deadlines.watch(self._expire)
        sent.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(index, target),
            errbackArgs=(index, target),
        )
        sent.addErrback(self._crashed)

    def _expire(self) -> None:
        """No answer within C{[auth] timeout}: cancel the attempt (L{_failed} reports it)."""
        pending = self._pending
        if pending is not None:
            self._timed_out = True
            pending.cancel()

    def _answered(self, response: IResponse, index: int, target: _Target) -> None:
        self._router._deadlines.done(self._deadline)
        self._pending = None
        try:
            answer = self._router._answered(index, target, response, self._request)
        except RouterUnavailable as e:
            self._fire(Failure(e))
            return
        if answer is None:
            self._next()
        elif isinstance(answer, float):
            # nginx sleeps Auth-Wait seconds (0: not at all) and sends the same request again.
            self._rounds += 1
            self._delayed = self._router._clock.callLater(answer, self._again)
        else:
            self._fire(answer)

    def _failed(self, failure: Failure, index: int, target: _Target) -> None:
        self._router._deadlines.done(self._deadline)
        self._pending = None
        if self._timed_out:
            # Cancelling an Agent request fails it with ResponseNeverReceived or the like.
            self._timed_out = False
            failure = Failure(TimeoutError(f"no answer within {self._router._timeout} seconds"))
        if self._cancelled:
            return
        if failure.check(CancelledError):
            self._fire(failure)
        elif self._router._log_failed(index, target, failure):
            self._next()
        else:
            self._fire(RouterUnavailable("auth_http: internal error"))

    def _crashed(self, failure: Failure) -> Failure | None:
        """A bug in the steps above: fail the lookup with it rather than leave it waiting."""
        if self._result is None:
            return failure
        self._fire(failure)
        return None

    def _next(self) -> None:
        self._index += 1
        if self._index < len(self._router._targets):
            self.ask()
        else:
            self._fire(RouterUnavailable("auth_http: no auth service answered"))

    def _again(self) -> None:
        self._delayed = None
        if self._rounds > _MAX_WAITS:
            self._router._log.error(
                "auth_http answered WAIT {count} times in a row",
                count=_MAX_WAITS + 1,
                problem="too-many-waits",
            )
            self._fire(RouterUnavailable("auth_http: answered WAIT too many times"))
            return
        self._index = 0
        self.ask()

    def _cancel(self, _: Deferred[Decision]) -> None:
        # Deferred.cancel fails the result itself once this returns.
        self._cancelled = True
        self._result = None
        delayed, self._delayed = self._delayed, None
        if delayed is not None:
            delayed.cancel()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()


def _last(headers: Headers, name: bytes) -> bytes | None:
    """The last value of header C{name}: nginx overwrites earlier ones as it reads."""
    values = headers.getRawHeaders(name)
    return values[-1] if values else None


def _describe(error: Exception) -> str:
    """A short text for a failed exchange; L{ResponseFailed} hides its reasons in a list."""
    if isinstance(error, ResponseFailed) and error.reasons:
        return "; ".join(repr(reason.value) for reason in error.reasons)
    return repr(error)


def new_http_router(config: AuthConfig, reactor: Any) -> tuple[HTTPRouter, IService]:
    """Build the router on C{reactor} with a keep-alive pool, and the service owning the pool."""
    client, pool_service = new_auth_client(config, reactor)
    return HTTPRouter(config, client, reactor), pool_service


__all__ = [
    "HTTPPoolService",
    "HTTPRouter",
    "escape_auth_value",
    "new_http_router",
    "parse_auth_server",
]
