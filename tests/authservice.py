"""A real nginx-protocol auth_http service on 127.0.0.1, for integration tests.

Each test sets C{respond} to decide the answer::

    service = await start_auth_service(self, ok_to("127.0.0.1", backend_port))
    ...
    self.assertEqual(service.requests[0]["auth-protocol"], "smtp")

C{respond} gets the request's headers and returns one of:
  - a dict of headers to answer with (HTTP 200, empty body);
  - an int: that HTTP status with no Auth-* headers (C{500} for a failing service);
  - bytes: written raw instead of an HTTP response, then the connection closes (garbage);
  - a L{Deferred} of any of the above: the answer waits until the test fires it, and a
    Deferred that never fires (see L{hang}) simulates a service that never answers.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint, wrapServerTLS
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override

Answer = dict[str, str] | int | bytes
Respond = Callable[[dict[str, str]], "Answer | Deferred[Answer]"]


class AuthService:
    """A Twisted Web auth_http endpoint on 127.0.0.1 (real socket, port 0)."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[dict[str, str]] = []
        self.url = ""
        self.connections = 0
        self._port: IListeningPort | None = None
        self._open: dict[HTTPChannel, Deferred[None]] = {}
        self._waiters: list[Deferred[dict[str, str]]] = []

    def request_arrived(self) -> Deferred[dict[str, str]]:
        """A Deferred that fires with the headers of the next request to arrive."""
        waiter: Deferred[dict[str, str]] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _received(self, headers: dict[str, str]) -> None:
        self.requests.append(headers)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(headers)

    def _connected(self, channel: HTTPChannel) -> None:
        self.connections += 1
        self._open[channel] = Deferred()

    def _disconnected(self, channel: HTTPChannel) -> None:
        closed = self._open.pop(channel, None)
        if closed is not None:
            closed.callback(None)

    async def stop(self) -> None:
        """Stop listening and drop every open connection, waiting until all are gone."""
        if self._port is not None:
            stopped = self._port.stopListening()
            if stopped is not None:
                await stopped
        closing = list(self._open.values())
        for channel in list(self._open):
            assert channel.transport is not None
            channel.transport.abortConnection()  # type: ignore[attr-defined]
        await DeferredList(closing)


class _Channel(HTTPChannel):
    """An HTTP/1.1 connection that tells its site's L{AuthService} when it opens and closes."""

    def _service(self) -> AuthService:
        assert isinstance(self.factory, _Site)
        return self.factory.service

    @override
    def connectionMade(self) -> None:
        super().connectionMade()
        self._service()._connected(self)

    @override
    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self._service()._disconnected(self)


class _Site(Site):
    """A site whose channels report to one L{AuthService} (plain HTTP/1.1, no HTTP/2)."""

    protocol = _Channel  # type: ignore[assignment]

    def __init__(self, resource: Resource, service: AuthService) -> None:
        super().__init__(resource)
        self.service = service


class _AuthResource(Resource):
    """Record each request's headers and answer with whatever C{respond} says."""

    isLeaf = True

    def __init__(self, service: AuthService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes | int:
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.service._received(headers)
        answer = self.service.respond(headers)
        if isinstance(answer, Deferred):
            answer.addCallback(self._answer, request)
            return NOT_DONE_YET
        return self._answer(answer, request)

    def _answer(self, answer: Answer, request: Request) -> bytes | int:
        if request._disconnected:  # type: ignore[attr-defined]
            return NOT_DONE_YET
        if isinstance(answer, bytes):
            assert request.channel is not None
            transport = request.channel.transport
            assert transport is not None
            transport.write(answer)
            transport.loseConnection()
            return NOT_DONE_YET
        if isinstance(answer, int):
            request.setResponseCode(answer)
        else:
            for name, value in answer.items():
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        if not request.startedWriting and request.finished == 0:
            request.write(b"")
        request.finish()
        return NOT_DONE_YET


async def start_auth_service(
    case: TestCase,
    respond: Respond,
    tls: IOpenSSLServerConnectionCreator | None = None,
) -> AuthService:
    """Listen on 127.0.0.1:0; registers case.addCleanup to stop it.

    With C{tls}, the service speaks HTTPS and C{url} is an C{https://} URL.
    """
    service = AuthService(respond)
    site = _Site(_AuthResource(service), service)
    site.displayTracebacks = False
    endpoint: IStreamServerEndpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    if tls is not None:
        endpoint = wrapServerTLS(tls, endpoint)
    port = await endpoint.listen(site)
    service._port = port
    scheme = "https" if tls is not None else "http"
    service.url = f"{scheme}://127.0.0.1:{port.getHost().port}/auth"  # type: ignore[attr-defined]
    case.addCleanup(lambda: Deferred.fromCoroutine(service.stop()))
    return service


def ok_to(host: str, port: int, **extra: str) -> Callable[[dict[str, str]], dict[str, str]]:
    """A respond function answering Auth-Status OK, Auth-Server host, Auth-Port port (+extra).

    Extra keyword names use underscores for dashes: C{Auth_User="bob"} sends ``Auth-User``.
    """
    answer = {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": str(port)}
    answer.update({name.replace("_", "-"): value for name, value in extra.items()})
    return lambda headers: answer


def refuse(message: str, **extra: str) -> Callable[[dict[str, str]], dict[str, str]]:
    """A respond function answering a failure: C{Auth-Status: message} (+extra headers)."""
    answer = {"Auth-Status": message}
    answer.update({name.replace("_", "-"): value for name, value in extra.items()})
    return lambda headers: answer


def hang() -> Callable[[dict[str, str]], Deferred[Answer]]:
    """A respond function that never answers (a slow service); the connection stays open."""
    return lambda headers: Deferred()
