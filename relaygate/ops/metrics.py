"""The Prometheus metrics every front reports to, and the registry a scrape reads.

Each family named in docs/operations.md is created here once. The fronts call one small method
per event (L{Metrics.session_started}, L{Metrics.transaction} ...); each method is a dictionary
lookup of a label child bound the first time its value is seen and one C{inc()}, so the message
path pays no label parsing or allocation per event.

With C{workers > 1} the process group is scraped as one: the parent sets
C{PROMETHEUS_MULTIPROC_DIR} before any worker starts, every process then keeps its values in
prometheus-client's memory-mapped files in that directory, and L{scrape_registry} merges them
(counters and histograms summed; C{relaygate_sessions_active} with C{livesum}, so only live
workers count). We chose this over the parent asking each worker at scrape time because it
needs no request/answer protocol between processes, keeps a dead worker's counts (counters must
not go backwards), and a scrape costs no worker any work.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

PROTOCOLS = ("smtp", "imap", "pop3")
TRANSACTION_OUTCOMES = ("delivered", "refused", "failed", "reset", "abandoned")
RECIPIENT_RESULTS = ("accepted", "refused", "deferred")
LOGIN_RESULTS = ("ok", "refused", "error")
AUTH_RESULTS = ("accept", "refuse", "error")
TLS_RESULTS = ("ok", "failed")
RELOAD_RESULTS = ("success", "failure")

# Seconds: an auth lookup or a backend connect is a few milliseconds on a LAN and seconds when
# something is wrong; these buckets separate those cases without a series per millisecond.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_Child = TypeVar("_Child", Counter, Gauge, Histogram)


class _Bound(Generic[_Child]):
    """The children of one labelled family by label value, each bound once on first use."""

    def __init__(self, family: _Child, values: Iterable[str] = ()) -> None:
        self._family: _Child = family
        self._children: dict[str, _Child] = {}
        for value in values:
            # Bound up front so a series exists (at 0) before its first event: rate() and
            # absent-series alerts then work from the first scrape.
            self[value]

    def __getitem__(self, value: str) -> _Child:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._family.labels(value)
        return child

    def remove(self, value: str) -> None:
        """Forget the series for C{value} (a backend no longer configured)."""
        if self._children.pop(value, None) is not None:
            self._family.remove(value)


class Metrics:
    """Every relaygate metric family, and one method per event the fronts report.

    @param registry: where the families are registered for a single-process scrape; C{None}
        in multiprocess mode, where L{scrape_registry} reads the shared directory instead.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self._sessions = _Bound(
            Counter(
                "relaygate_sessions",
                "Connections that reached a front.",
                ["protocol"],
                registry=r,
            ),
            PROTOCOLS,
        )
        self._active = _Bound(
            Gauge(
                "relaygate_sessions_active",
                "Sessions open now.",
                ["protocol"],
                registry=r,
                multiprocess_mode="livesum",
            ),
            PROTOCOLS,
        )
        self._transactions = _Bound(
            Counter(
                "relaygate_transactions",
                "SMTP transactions by outcome, as in the access log.",
                ["outcome"],
                registry=r,
            ),
            TRANSACTION_OUTCOMES,
        )
        self._recipients = _Bound(
            Counter(
                "relaygate_recipients",
                "RCPT TO commands by result.",
                ["result"],
                registry=r,
            ),
            RECIPIENT_RESULTS,
        )
        self._message_bytes = Counter(
            "relaygate_message_bytes",
            "Bytes of message bodies relayed to backends.",
            registry=r,
        )
        self._logins = Counter(
            "relaygate_logins",
            "Logins (SMTP AUTH, IMAP, POP3) by protocol and result.",
            ["protocol", "result"],
            registry=r,
        )
        self._login_children = {
            (protocol, result): self._logins.labels(protocol, result)
            for protocol in PROTOCOLS
            for result in LOGIN_RESULTS
        }
        self._auth_requests = _Bound(
            Counter(
                "relaygate_auth_requests",
                "Routing requests to the auth service or the route table, by result.",
                ["result"],
                registry=r,
            ),
            AUTH_RESULTS,
        )
        self._auth_duration = Histogram(
            "relaygate_auth_request_duration_seconds",
            "Time from asking the router to its answer.",
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self._connect_duration = Histogram(
            "relaygate_backend_connect_duration_seconds",
            "Time to open a connection to a backend.",
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        # livemin: with workers each runs its own checks; a backend counts as up only when no
        # live worker holds it down (passive marks are per worker).
        self._backend_up = _Bound(
            Gauge(
                "relaygate_backend_up",
                "1 when health checks find the backend up, 0 when it is held down.",
                ["backend"],
                registry=r,
                multiprocess_mode="livemin",
            )
        )
        self._tls = _Bound(
            Counter(
                "relaygate_tls_handshakes",
                "Client TLS handshakes by result.",
                ["result"],
                registry=r,
            ),
            TLS_RESULTS,
        )
        self._limits = _Bound(
            Counter(
                "relaygate_limit_refusals",
                "Connections or commands refused by a configured limit.",
                ["limit"],
                registry=r,
            )
        )
        self._reloads = _Bound(
            Counter(
                "relaygate_config_reloads",
                "Configuration reloads (SIGHUP) by result.",
                ["result"],
                registry=r,
            ),
            RELOAD_RESULTS,
        )

    def session_started(self, protocol: str) -> None:
        """A connection reached the C{protocol} front."""
        self._sessions[protocol].inc()
        self._active[protocol].inc()

    def session_ended(self, protocol: str) -> None:
        """A C{protocol} session closed."""
        self._active[protocol].dec()

    def transaction(self, outcome: str, size: int = 0) -> None:
        """An SMTP transaction ended with C{outcome}; C{size} body bytes went to the backend."""
        self._transactions[outcome].inc()
        if size:
            self._message_bytes.inc(size)

    def recipient(self, result: str) -> None:
        """A RCPT TO was C{accepted}, C{refused} (5xx) or C{deferred} (4xx)."""
        self._recipients[result].inc()

    def login(self, protocol: str, result: str) -> None:
        """A login ended C{ok}, C{refused} or in an C{error}."""
        child = self._login_children.get((protocol, result))
        if child is None:
            child = self._login_children[protocol, result] = self._logins.labels(protocol, result)
        child.inc()

    def auth_request(self, result: str, duration: float) -> None:
        """The router answered C{accept}, C{refuse} or failed (C{error}) after C{duration}s."""
        self._auth_requests[result].inc()
        self._auth_duration.observe(duration)

    def backend_connected(self, duration: float) -> None:
        """A backend connection was opened after C{duration} seconds."""
        self._connect_duration.observe(duration)

    def backend_up(self, backend: str, up: bool) -> None:
        """Health checks (or a passive mark) now find C{backend} (C{host:port}) up or down."""
        self._backend_up[backend].set(1 if up else 0)

    def backend_forgotten(self, backend: str) -> None:
        """C{backend} is no longer checked (removed from the configuration)."""
        self._backend_up.remove(backend)

    def tls_handshake(self, result: str) -> None:
        """A client TLS handshake ended C{ok} or C{failed}."""
        self._tls[result].inc()

    def limit_refusal(self, limit: str) -> None:
        """A configured C{limit} refused a connection or command."""
        self._limits[limit].inc()

    def config_reload(self, result: str) -> None:
        """A SIGHUP reload ended in C{success} or C{failure}."""
        self._reloads[result].inc()


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def new_metrics() -> tuple[Metrics, CollectorRegistry]:
    """This process's L{Metrics} and the registry a scrape should read.

    In multiprocess mode the families write to the shared directory and the scrape registry
    merges every process's files; otherwise both use one private registry.
    """
    path = multiprocess_dir()
    if path is not None:
        return Metrics(None), scrape_registry(path)
    registry = CollectorRegistry()
    return Metrics(registry), registry


def scrape_registry(path: str) -> CollectorRegistry:
    """A registry whose collection merges the metric files of every process under C{path}."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return registry


def prepare_multiprocess_dir(path: str) -> None:
    """Empty C{path} (or create it) for a new process group, and export it to children.

    Called by the parent before the first worker starts: files left by an earlier run would
    otherwise be added to this run's counters.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    os.environ[MULTIPROC_ENV] = path


def parent_metrics() -> tuple[str, Metrics, CollectorRegistry]:
    """The parent of workers: a fresh shared directory, exported to the workers it will
    start, and the parent's own metrics (config reloads) written there too.

    prometheus-client picks its value class when it is first imported, before this process
    knew it would have workers; the parent switches to the multiprocess one here, as
    C{values.get_value_class} would have with the variable set.
    """
    base = os.environ.get("RUNTIME_DIRECTORY") or None
    path = tempfile.mkdtemp(prefix="relaygate-metrics-", dir=base)
    prepare_multiprocess_dir(path)
    values.ValueClass = values.MultiProcessValue()
    return path, Metrics(None), scrape_registry(path)


def worker_ended(pid: int, path: str) -> None:
    """Drop an ended worker's live gauges (its counters stay in the totals)."""
    mark_process_dead(pid, path)
