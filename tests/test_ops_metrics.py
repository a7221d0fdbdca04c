"""Tests for L{relaygate.ops.metrics}: the families, their labels, and multiprocess merging."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest, values
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from relaygate.ops.metrics import (
    MULTIPROC_ENV,
    Metrics,
    new_metrics,
    prepare_multiprocess_dir,
    scrape_registry,
    worker_ended,
)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The value of one sample, or None when the series does not exist."""
    return registry.get_sample_value(name, labels)


class MetricsTests(SynchronousTestCase):
    """Each event method moves exactly its family."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)

    def test_series_exist_at_zero_before_any_event(self) -> None:
        """Known label values are exported at 0 from the start, so rate() works at once."""
        r = self.registry
        self.assertEqual(sample(r, "relaygate_sessions_total", protocol="imap"), 0.0)
        self.assertEqual(sample(r, "relaygate_transactions_total", outcome="abandoned"), 0.0)
        self.assertEqual(sample(r, "relaygate_recipients_total", result="deferred"), 0.0)
        self.assertEqual(sample(r, "relaygate_logins_total", protocol="pop3", result="error"), 0.0)
        self.assertEqual(sample(r, "relaygate_auth_requests_total", result="refuse"), 0.0)
        self.assertEqual(sample(r, "relaygate_config_reloads_total", result="failure"), 0.0)
        self.assertEqual(sample(r, "relaygate_tls_handshakes_total", result="failed"), 0.0)
        self.assertEqual(sample(r, "relaygate_message_bytes_total"), 0.0)

    def test_session_start_and_end(self) -> None:
        """A session counts once in the total and in the active gauge until it ends."""
        self.metrics.session_started("smtp")
        self.metrics.session_started("smtp")
        self.metrics.session_ended("smtp")
        self.assertEqual(sample(self.registry, "relaygate_sessions_total", protocol="smtp"), 2.0)
        self.assertEqual(sample(self.registry, "relaygate_sessions_active", protocol="smtp"), 1.0)

    def test_transaction_counts_outcome_and_bytes(self) -> None:
        """A delivered transaction adds its body size to relaygate_message_bytes_total."""
        self.metrics.transaction("delivered", 1234)
        self.metrics.transaction("reset")
        r = self.registry
        self.assertEqual(sample(r, "relaygate_transactions_total", outcome="delivered"), 1.0)
        self.assertEqual(sample(r, "relaygate_transactions_total", outcome="reset"), 1.0)
        self.assertEqual(sample(r, "relaygate_message_bytes_total"), 1234.0)

    def test_recipients_logins_tls_limits_reloads(self) -> None:
        """Each per-event method increments its own labelled series."""
        m = self.metrics
        m.recipient("accepted")
        m.login("imap", "refused")
        m.tls_handshake("ok")
        m.limit_refusal("connections")
        m.limit_refusal("connections")
        m.config_reload("success")
        r = self.registry
        self.assertEqual(sample(r, "relaygate_recipients_total", result="accepted"), 1.0)
        self.assertEqual(
            sample(r, "relaygate_logins_total", protocol="imap", result="refused"), 1.0
        )
        self.assertEqual(sample(r, "relaygate_tls_handshakes_total", result="ok"), 1.0)
        self.assertEqual(sample(r, "relaygate_limit_refusals_total", limit="connections"), 2.0)
        self.assertEqual(sample(r, "relaygate_config_reloads_total", result="success"), 1.0)

    def test_durations_are_histograms(self) -> None:
        """Auth and backend connect durations land in histogram buckets."""
        self.metrics.auth_request("accept", 0.003)
        self.metrics.backend_connected(0.2)
        r = self.registry
        self.assertEqual(sample(r, "relaygate_auth_requests_total", result="accept"), 1.0)
        self.assertEqual(
            sample(r, "relaygate_auth_request_duration_seconds_bucket", le="0.005"), 1.0
        )
        self.assertEqual(
            sample(r, "relaygate_auth_request_duration_seconds_bucket", le="0.0025"), 0.0
        )
        self.assertEqual(sample(r, "relaygate_backend_connect_duration_seconds_count"), 1.0)
        self.assertEqual(sample(r, "relaygate_backend_connect_duration_seconds_sum"), 0.2)

    def test_backend_up_and_forgotten(self) -> None:
        """relaygate_backend_up follows the health state and disappears when forgotten."""
        self.metrics.backend_up("127.0.0.1:25", True)
        self.metrics.backend_up("127.0.0.1:26", False)
        r = self.registry
        self.assertEqual(sample(r, "relaygate_backend_up", backend="127.0.0.1:25"), 1.0)
        self.assertEqual(sample(r, "relaygate_backend_up", backend="127.0.0.1:26"), 0.0)
        self.metrics.backend_forgotten("127.0.0.1:26")
        self.assertIsNone(sample(r, "relaygate_backend_up", backend="127.0.0.1:26"))

    def test_exposition_names(self) -> None:
        """The text exposition carries the documented family names."""
        text = generate_latest(self.registry)
        for name in (
            b"# TYPE relaygate_sessions_total counter",
            b"# TYPE relaygate_sessions_active gauge",
            b"# TYPE relaygate_auth_request_duration_seconds histogram",
            b"# TYPE relaygate_backend_connect_duration_seconds histogram",
            b"# TYPE relaygate_backend_up gauge",
            b"# TYPE relaygate_limit_refusals_total counter",
        ):
            self.assertIn(name, text)

    def test_new_metrics_single_process(self) -> None:
        """Without the multiprocess directory, metrics and scrape share one registry."""
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV})
        metrics, registry = new_metrics()
        metrics.recipient("refused")
        self.assertEqual(sample(registry, "relaygate_recipients_total", result="refused"), 1.0)


class MultiprocessTests(SynchronousTestCase):
    """With workers, one scrape reads the totals of every process in the group."""

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        environ = dict(os.environ)
        self.patch(os, "environ", environ)
        prepare_multiprocess_dir(self.path.path)

    def in_process(self, pid: int) -> Metrics:
        """Metrics as a worker with process id C{pid} would create them."""
        self.patch(values, "ValueClass", values.MultiProcessValue(lambda: pid))
        return Metrics(None)

    def test_prepare_exports_and_empties(self) -> None:
        """The parent's preparation sets the variable and removes an earlier run's files."""
        self.assertEqual(os.environ[MULTIPROC_ENV], self.path.path)
        self.path.child("counter_99.db").setContent(b"old")
        prepare_multiprocess_dir(self.path.path)
        self.assertEqual(self.path.listdir(), [])

    def test_counters_summed_and_live_gauges_summed(self) -> None:
        """Two workers' counters add up; sessions_active sums only live workers."""
        first = self.in_process(1001)
        second = self.in_process(1002)
        first.session_started("smtp")
        first.transaction("delivered", 100)
        second.session_started("smtp")
        second.session_started("smtp")
        second.transaction("delivered", 50)
        registry = scrape_registry(self.path.path)
        self.assertEqual(sample(registry, "relaygate_sessions_total", protocol="smtp"), 3.0)
        self.assertEqual(sample(registry, "relaygate_sessions_active", protocol="smtp"), 3.0)
        self.assertEqual(sample(registry, "relaygate_message_bytes_total"), 150.0)
        worker_ended(1002, self.path.path)
        registry = scrape_registry(self.path.path)
        self.assertEqual(sample(registry, "relaygate_sessions_total", protocol="smtp"), 3.0)
        self.assertEqual(sample(registry, "relaygate_sessions_active", protocol="smtp"), 1.0)

    def test_backend_up_is_the_minimum_over_workers(self) -> None:
        """A backend one worker holds down is exported as down."""
        self.in_process(2001).backend_up("127.0.0.1:25", True)
        self.in_process(2002).backend_up("127.0.0.1:25", False)
        registry = scrape_registry(self.path.path)
        self.assertEqual(sample(registry, "relaygate_backend_up", backend="127.0.0.1:25"), 0.0)
