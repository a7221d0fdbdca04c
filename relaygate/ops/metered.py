"""Metrics gathered where the facts already pass: around the router, and from access events.

L{MeteredRouter} wraps whichever router a generation uses (auth_http or the route table): each
lookup counts C{relaygate_auth_requests_total{result}} and its duration, and a lookup that
checks a login (an C{Auth-Method} other than C{none}) counts C{relaygate_logins_total}.

L{AccessMetrics} is a log observer: every C{smtp.transaction} access event (docs/logging.md)
already carries the outcome, the recipients with their replies and the body size, and every
limit refusal is an event of the limits wrapper. Counting from those events keeps the fronts
free of metrics code for them, and costs one observer call per transaction, not per chunk.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from relaygate.ops.metrics import Metrics
from relaygate.policy import TOO_MANY_AUTH_FAILURES, TOO_MANY_CONNECTIONS, TOO_MANY_NEW_CONNECTIONS
from relaygate.routing.router import Accept, AuthRequest, Decision, Router

LIMIT_NAMES = {
    TOO_MANY_CONNECTIONS.decode(): "connections_per_address",
    TOO_MANY_NEW_CONNECTIONS.decode(): "connections_per_minute",
    TOO_MANY_AUTH_FAILURES.decode(): "auth_failures_per_hour",
}
LIMITS_NAMESPACE = "relaygate.policy.LimitedConnection"


class MeteredRouter:
    """A L{Router} that counts and times the lookups of the router it wraps."""

    def __init__(self, router: Router, metrics: Metrics, clock: IReactorTime) -> None:
        self.router = router
        self._metrics = metrics
        self._clock = clock

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        """Ask the wrapped router; count the answer when it comes."""
        started = self._clock.seconds()
        answer = self.router.lookup(request)

        def counted(decision: Decision) -> Decision:
            result = "accept" if isinstance(decision, Accept) else "refuse"
            self._metrics.auth_request(result, self._clock.seconds() - started)
            if request.method != "none":
                self._metrics.login(request.protocol, "ok" if result == "accept" else "refused")
            return decision

        def failed(failure: Failure) -> Failure:
            self._metrics.auth_request("error", self._clock.seconds() - started)
            if request.method != "none":
                self._metrics.login(request.protocol, "error")
            return failure

        return answer.addCallbacks(counted, failed)

    def __getattr__(self, name: str) -> Any:
        # Anything else a front asks of its router is the wrapped router's.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["router"], name)


def recipient_result(reply: str) -> str:
    """C{accepted}, C{deferred} or C{refused} for the reply a RCPT got."""
    if reply.startswith("2"):
        return "accepted"
    if reply.startswith("4"):
        return "deferred"
    return "refused"


@implementer(ILogObserver)
class AccessMetrics:
    """Counts transactions, recipients, body bytes and limit refusals from log events."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "smtp.transaction" and event.get("log_namespace") == "relaygate.access":
            self._metrics.transaction(
                str(event.get("outcome", "abandoned")), int(event.get("size") or 0)
            )
            for _, reply in event.get("recipients") or ():
                self._metrics.recipient(recipient_result(str(reply)))
        elif event.get("log_namespace") == LIMITS_NAMESPACE and "why" in event:
            limit = LIMIT_NAMES.get(str(event["why"]))
            if limit is not None:
                self._metrics.limit_refusal(limit)
