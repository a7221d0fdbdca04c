"""Hypothesis settings shared by the property tests (C{tests/test_*_properties.py}).

Bounded so the whole suite stays fast: at most 200 examples a test and no per-example
deadline (a loaded CI machine would make timing flaky). With C{CI} set the examples are
derived from each test's name (C{derandomize}), so a CI run is reproducible; locally they
are random, so every run explores new inputs. No example database: trial's temporary
directory is new each run, and a failure prints the example that reproduces it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.peers import in_ci

settings.register_profile(
    "relaygate",
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "relaygate-ci", parent=settings.get_profile("relaygate"), derandomize=True
)
settings.load_profile("relaygate-ci" if in_ci() else "relaygate")
