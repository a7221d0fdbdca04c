"""Backend health: active probes of route backends, passive marks, and failover order.

Every C{interval} seconds each backend named in a C{[[route]]} is probed the way a client would
meet it, with the route's backend TLS and PROXY settings, all within C{timeout}: SMTP connect,
C{220} greeting, C{EHLO}, C{QUIT}; IMAP C{* OK} greeting, C{LOGOUT}; POP3 C{+OK}, C{QUIT}. With
C{backend_tls = "required"} the probe also upgrades with STARTTLS (STLS) before the last
command, so a backend whose certificate no longer verifies is taken out too. A backend that
accepts the connection but never greets fails by timeout, so clients stop waiting on it.
C{fall} failures in a row take a backend down, C{rise} passes in a row bring it back (HAProxy's
rules); each change is logged once and exported as C{relaygate_backend_up}.

Backends the auth service names can't be probed in advance; a failed connection marks one down
passively for C{passive_down} seconds (nginx's C{max_fails=1 fail_timeout}).

L{Health.order} is what failover calls: the backends of a route that are up, in their order,
or all of them in order when none is (a probe can be wrong; mail should still try).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from relaygate.addresses import HostPort
from relaygate.connect import client_endpoint
from relaygate.ops.metrics import Metrics
from relaygate.ops.probe import ProbeFailed, ProbeReader, ProbeTarget, run_probe
from relaygate.proxy_protocol import encode_header


@dataclass(frozen=True)
class HealthSettings:
    """The C{[health]} values this module needs."""

    interval: float = 5.0
    timeout: float = 2.0
    fall: int = 2
    rise: int = 2
    passive_down: float = 10.0


@dataclass
class _State:
    """What is known of one backend."""

    up: bool = True
    fails: int = 0
    passes: int = 0
    passive_until: float = 0.0
    passive_timer: IDelayedCall | None = None


class _ProbeFactory(Factory):
    """Builds probe readers without logging every probe's start and stop."""

    noisy = False
    protocol = ProbeReader


_PROBE_FACTORY = _ProbeFactory()


def probe_endpoint(reactor: Any, target: ProbeTarget, timeout: float) -> IStreamClientEndpoint:
    """The connection a probe of C{target} uses: implicit TLS and PROXY as the route says.

    The PROXY header is C{UNKNOWN} (v1) or C{LOCAL} (v2): the probe speaks for no client, which
    is what HAProxy's own checks send.
    """
    preamble = b""
    if target.proxy_protocol in ("v1", "v2"):
        preamble = encode_header(target.proxy_protocol, ("", 0), ("", 0))
    tls = target.tls_creator if target.tls == "implicit" else None
    return client_endpoint(reactor, target.backend, timeout, tls=tls, preamble=preamble)


class Health(Service):
    """Probes C{targets} (when C{active}) and answers which backends failover should try.

    @param connect: the endpoint for one probe (tests pass their own).
    """

    _log = Logger()

    def __init__(
        self,
        targets: Sequence[ProbeTarget],
        settings: HealthSettings,
        reactor: Any,
        ehlo_name: str,
        metrics: Metrics | None = None,
        active: bool = True,
        connect: Callable[[ProbeTarget], IStreamClientEndpoint] | None = None,
    ) -> None:
        self._settings = settings
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._ehlo_name = ehlo_name
        self._metrics = metrics
        self._active = active
        self._connect = connect or (lambda t: probe_endpoint(reactor, t, settings.timeout))
        self._targets: dict[str, ProbeTarget] = {}
        for target in targets:
            self._targets.setdefault(str(target.backend), target)
        self._states: dict[str, _State] = {}
        self._loops: list[LoopingCall] = []
        self._in_flight: set[Deferred[None]] = set()

    @override
    def startService(self) -> None:
        super().startService()
        if not self._active:
            return
        for key, target in self._targets.items():
            self._state(key)
            self._export(key)
            loop = LoopingCall(self.probe, target)
            loop.clock = self._clock
            self._loops.append(loop)
            loop.start(self._settings.interval, now=True).addErrback(self._loop_failed)

    @override
    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for probe in list(self._in_flight):
            probe.cancel()
        for state in self._states.values():
            if state.passive_timer is not None and state.passive_timer.active():
                state.passive_timer.cancel()
            state.passive_timer = None

    def _loop_failed(self, failure: Failure) -> None:
        self._log.failure("health check loop failed", failure)

    def _state(self, key: str) -> _State:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
        return state

    def probe(self, target: ProbeTarget) -> Deferred[None]:
        """Probe C{target} once and record the result; never fails."""
        key = str(target.backend)

        async def probe() -> None:
            protocol = await self._connect(target).connect(_PROBE_FACTORY)
            assert isinstance(protocol, ProbeReader)
            try:
                await run_probe(protocol, target.protocol, self._ehlo_name, target)
            finally:
                protocol.abort()

        attempt = Deferred.fromCoroutine(probe())
        attempt.addTimeout(self._settings.timeout, self._clock)
        done: Deferred[None] = attempt.addCallbacks(
            lambda _: self.record(key, True, ""),
            lambda failure: self.record(key, False, _describe(failure, self._settings.timeout)),
        )
        self._in_flight.add(done)
        done.addBoth(lambda _: self._in_flight.discard(done))
        return done

    def record(self, key: str, ok: bool, why: str) -> None:
        """Count one probe result for C{key} and change the state after C{fall}/C{rise}."""
        state = self._state(key)
        if ok:
            state.fails = 0
            state.passes += 1
            if not state.up and state.passes >= self._settings.rise:
                state.up = True
                self._log.info("backend {backend} is up", backend=key)
                self._export(key)
        else:
            state.passes = 0
            state.fails += 1
            if state.up and state.fails >= self._settings.fall:
                state.up = False
                self._log.warn(
                    "backend {backend} is down after {fails} failed probe(s): {why}",
                    backend=key,
                    fails=state.fails,
                    why=why,
                )
                self._export(key)

    def mark_failed(self, backend: HostPort) -> None:
        """A connection to C{backend} failed: avoid it for C{passive_down} seconds."""
        if self._settings.passive_down <= 0:
            return
        key = str(backend)
        state = self._state(key)
        now = self._clock.seconds()
        was_down = now < state.passive_until
        state.passive_until = now + self._settings.passive_down
        if state.passive_timer is not None and state.passive_timer.active():
            state.passive_timer.cancel()
        state.passive_timer = self._clock.callLater(
            self._settings.passive_down, self._passive_over, key
        )
        if not was_down:
            self._log.warn(
                "backend {backend} failed a connection; avoided for {seconds}s",
                backend=key,
                seconds=self._settings.passive_down,
            )
            self._export(key)

    def mark_ok(self, backend: HostPort) -> None:
        """A connection to C{backend} worked: lift a passive mark at once."""
        state = self._states.get(str(backend))
        if state is None or not state.passive_until:
            return
        if state.passive_timer is not None and state.passive_timer.active():
            state.passive_timer.cancel()
        self._passive_over(str(backend))

    def _passive_over(self, key: str) -> None:
        state = self._state(key)
        state.passive_timer = None
        if state.passive_until:
            state.passive_until = 0.0
            self._log.info("backend {backend} is tried again", backend=key)
            self._export(key)

    def is_up(self, backend: HostPort) -> bool:
        """Whether failover should try C{backend} before the backends that are down."""
        state = self._states.get(str(backend))
        if state is None:
            return True
        return state.up and self._clock.seconds() >= state.passive_until

    def order(self, backends: Sequence[HostPort]) -> list[HostPort]:
        """The backends to try, in order: those up, or every one when none is up."""
        up = [backend for backend in backends if self.is_up(backend)]
        return up or list(backends)

    def _export(self, key: str) -> None:
        if self._metrics is not None:
            state = self._state(key)
            self._metrics.backend_up(key, state.up and not state.passive_until)


def _describe(failure: Failure, timeout: float) -> str:
    if failure.check(DeferredTimeout):
        return f"no answer within {timeout}s"
    if failure.check(ProbeFailed):
        return str(failure.value)
    return failure.getErrorMessage() or repr(failure.value)
