"""Metrics gathered where the facts already pass: around the router, and from access events.

L{MeteredRouter} wraps whichever router a generation uses (auth_http or the route table): each
lookup counts C{relaygate_auth_requests_total{result}} and its duration, and a lookup that
checks a login (an C{Auth-Method} other than C{none}) counts C{relaygate_logins_total}.

L{AccessMetrics} is an access observer (L{relaygate.observe.add_access_observer}) and a log
observer: every C{smtp.transaction} access event (docs/logging.md) already carries the outcome,
the recipients with their replies and the body size, and every limit refusal is an event of the
limits wrapper. Counting from those events keeps the fronts free of metrics code for them, and
costs one observer call per transaction, not per chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import UserError
from twisted.internet.interfaces import IAddress, IConnector, IDelayedCall, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.logger import ILogObserver
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import directlyProvides, implementer, providedBy

from relaygate.addresses import HostPort
from relaygate.ops.health import Health
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
    """A L{Router} that counts and times the lookups of the router it wraps, and puts the
    backends of each accepted route in failover order by their health (L{Health.order})."""

    def __init__(
        self,
        router: Router,
        metrics: Metrics,
        clock: IReactorTime,
        health: Health | None = None,
    ) -> None:
        self.router = router
        self._metrics = metrics
        self._clock = clock
        self._health = health

    def lookup(self, request: AuthRequest) -> Deferred[Decision]:
        """Ask the wrapped router; count the answer when it comes."""
        started = self._clock.seconds()
        answer = self.router.lookup(request)

        def counted(decision: Decision) -> Decision:
            result = "accept" if isinstance(decision, Accept) else "refuse"
            self._metrics.auth_request(result, self._clock.seconds() - started)
            if request.method != "none":
                self._metrics.login(request.protocol, "ok" if result == "accept" else "refused")
            if isinstance(decision, Accept) and self._health is not None:
                ordered = tuple(self._health.order(decision.backends))
                if ordered != decision.backends:
                    decision = dataclasses.replace(decision, backends=ordered)
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


class _TimedConnect(ClientFactory):
    """Stands in for an endpoint's factory to time one backend connection and report it."""

    noisy = False

    def __init__(self, wrapped: Any, target: HostPort, reporter: MeteredReactor) -> None:
        self._wrapped = wrapped
        self._target = target
        self._reporter = reporter
        self._started = reporter.seconds()

    @override
    def doStart(self) -> None:
        self._wrapped.doStart()

    @override
    def doStop(self) -> None:
        self._wrapped.doStop()

    @override
    def startedConnecting(self, connector: IConnector) -> None:
        self._wrapped.startedConnecting(connector)

    @override
    def buildProtocol(self, addr: IAddress | None) -> Any:
        self._reporter.connected(self._target, self._reporter.seconds() - self._started)
        return self._wrapped.buildProtocol(addr)

    @override
    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not reason.check(UserError):  # cancelled by our own timeout or caller: not its fault
            self._reporter.failed(self._target)
        self._wrapped.clientConnectionFailed(connector, reason)

    @override
    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        self._wrapped.clientConnectionLost(connector, reason)


class MeteredReactor:
    """The reactor as the fronts see it: backend connections are timed
    (C{relaygate_backend_connect_duration_seconds}) and each one that fails marks its backend
    passively down (L{Health.mark_failed}), each that succeeds lifts the mark.

    The fronts open every backend connection with C{connectTCP} through their reactor
    (L{relaygate.connect.client_endpoint}), so this sees all of them without code in the
    fronts or the failover loop; everything else is the real reactor's.
    """

    def __init__(self, reactor: Any, metrics: Metrics, health: Health) -> None:
        self._reactor = reactor
        self._metrics = metrics
        self._health = health
        directlyProvides(self, *providedBy(reactor))
        # The reactor's own bound methods, asked for on every command by the sessions'
        # timers: no Python frame of ours around them, and no __getattr__ on each call.
        self.seconds: Callable[[], float] = reactor.seconds
        self.callLater: Callable[..., IDelayedCall] = reactor.callLater

    def connectTCP(  # noqa: N802
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: Any = None,  # noqa: N803
    ) -> IConnector:
        """Connect as the real reactor does, through a factory that reports the outcome."""
        timed = _TimedConnect(factory, HostPort(host, port), self)
        connector: IConnector = self._reactor.connectTCP(host, port, timed, timeout, bindAddress)
        return connector

    def connected(self, target: HostPort, duration: float) -> None:
        self._metrics.backend_connected(duration)
        self._health.mark_ok(target)

    def failed(self, target: HostPort) -> None:
        self._health.mark_failed(target)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["_reactor"], name)


def recipient_result(reply: str) -> str:
    """C{accepted}, C{deferred} or C{refused} for the reply a RCPT got."""
    if reply.startswith("2"):
        return "accepted"
    if reply.startswith("4"):
        return "deferred"
    return "refused"


@implementer(ILogObserver)
class AccessMetrics:
    """Counts transactions, recipients and body bytes from access events, limit refusals from
    log events."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def access(self, fields: dict[str, Any]) -> None:
        """An access event as built (L{relaygate.observe.add_access_observer}): written to the
        twistd log or the C{[log] access} file, it is counted the same."""
        if fields.get("kind") == "smtp.transaction":
            self._metrics.transaction(
                str(fields.get("outcome", "abandoned")), int(fields.get("size") or 0)
            )
            for _, reply in fields.get("recipients") or ():
                self._metrics.recipient(recipient_result(str(reply)))

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == LIMITS_NAMESPACE and "why" in event:
            limit = LIMIT_NAMES.get(str(event["why"]))
            if limit is not None:
                self._metrics.limit_refusal(limit)
