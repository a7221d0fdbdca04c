"""The metrics listener's HTTP resources: C{/metrics}, C{/sessions} and C{/sessions/close}.

C{GET /metrics} is prometheus-client's own exposition (text or OpenMetrics, as the scraper's
C{Accept} asks). C{GET /sessions} lists the open sessions as JSON, and
C{POST /sessions/close?user=NAME} (or C{?id=ID}) closes the matching ones, answering
C{{"closed": N}} — what C{doveadm proxy kick} does. With C{[metrics] token} set every path needs
C{Authorization: Bearer TOKEN}; without it only loopback clients are served.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override

from relaygate.ops.sessions import SessionView


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class _Guarded(Resource):
    """A resource that serves only an allowed client: the bearer token, or loopback."""

    _log = Logger()

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token.encode("utf-8")

    def allowed(self, request: Request) -> bool:
        """Check the client; when refused, set the status and headers of the refusal."""
        if self._token:
            given = request.getHeader(b"authorization") or b""
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(
                credential.strip(), self._token
            ):
                return True
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer realm="relaygate"')
            return False
        client = request.getClientAddress()
        if is_loopback(getattr(client, "host", "")):
            return True
        request.setResponseCode(403)
        return False

    @staticmethod
    def send_json(request: Request, value: Any) -> bytes:
        """The body for C{value} as JSON, with its content type set."""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode("utf-8") + b"\n"

    def answer_later(self, request: Request, result: Deferred[Any]) -> int:
        """Finish C{request} with C{result} as JSON when it fires."""

        def done(value: Any) -> None:
            request.write(self.send_json(request, value))
            request.finish()

        def failed(failure: Failure) -> None:
            self._log.failure("answering {path!r} failed", failure, path=request.path)
            request.setResponseCode(500)
            request.write(self.send_json(request, {"error": "internal error"}))
            request.finish()

        result.addCallbacks(done, failed)
        return NOT_DONE_YET


class MetricsResource(_Guarded):
    """C{GET /metrics}: the registry in the format the scraper accepts."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, token: str) -> None:
        super().__init__(token)
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """The exposition, produced by prometheus-client."""
        if not self.allowed(request):
            return b""
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self._registry)


class SessionsResource(_Guarded):
    """C{GET /sessions}: the open sessions as a JSON list."""

    def __init__(self, view: SessionView, token: str) -> None:
        super().__init__(token)
        self._view = view
        self.putChild(b"close", CloseResource(view, token))

    @override
    def getChild(self, path: bytes, request: Request) -> Resource:
        # "/sessions/" (a trailing slash) is the list too.
        if path == b"":
            return self
        child: Resource = super().getChild(path, request)
        return child

    def render_GET(self, request: Request) -> bytes | int:
        """The list, from this process or gathered from the workers."""
        if not self.allowed(request):
            return b""
        return self.answer_later(request, self._view.snapshot())


class CloseResource(_Guarded):
    """C{POST /sessions/close?user=NAME} or C{?id=ID}: close sessions, answer the count."""

    isLeaf = True

    def __init__(self, view: SessionView, token: str) -> None:
        super().__init__(token)
        self._view = view

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802
        """Close what matches; a request naming neither a user nor an id is refused."""
        if not self.allowed(request):
            return b""
        args = request.args or {}
        users = args.get(b"user", [])
        ids = args.get(b"id", [])
        if len(users) + len(ids) != 1 or not (users or ids)[0]:
            request.setResponseCode(400)
            return self.send_json(request, {"error": "give exactly one of user=NAME or id=ID"})
        user = users[0].decode("utf-8", "replace") if users else None
        session_id = ids[0].decode("utf-8", "replace") if ids else None
        closed = self._view.close_matching(user, session_id)
        self._log.info(
            "sessions closed by request: user={user!r} id={session_id!r}",
            user=user,
            session_id=session_id,
        )
        return self.answer_later(request, closed.addCallback(lambda n: {"closed": n}))


def ops_root(registry: CollectorRegistry, view: SessionView, token: str) -> Resource:
    """The root resource of the metrics listener."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry, token))
    root.putChild(b"sessions", SessionsResource(view, token))
    return root


def ops_site(registry: CollectorRegistry, view: SessionView, token: str) -> Site:
    """The HTTP site for C{[metrics] listen}; scrapes are not logged (one a few seconds)."""
    site = Site(ops_root(registry, view, token))
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
