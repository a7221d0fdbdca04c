"""The fault-injection soak (C{bench/chaos.py}) as a bounded run on every test run.

One run of the script per test process (about 150 messages, 10 clients, messages up to 256 KiB:
some 20 seconds), shared by the tests below; each test asserts one of the soak's invariants on
the figures the script wrote. The script starts a real C{twistd relaygate}, scripted backends
and an auth service on 127.0.0.1; C{docs/reliability.md} says how to run it longer.

The seed is fixed so a failure replays; set C{RELAYGATE_CHAOS_SEED} to try another one.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAOS = os.path.join(ROOT, "bench", "chaos.py")
SEED = os.environ.get("RELAYGATE_CHAOS_SEED", "11")
ARGUMENTS = ["--messages", "150", "--concurrency", "10", "--max-size", "262144"]
# The bound of the run itself: the soak stops starting sessions after this many seconds.
DURATION = "90"

_figures: dict[str, Any] = {}


async def soak_figures(case: TestCase) -> dict[str, Any]:
    """The figures of this process's soak run (run it on first use, in CASE's temp dir)."""
    if not _figures:
        directory = os.path.abspath(case.mktemp())
        path = os.path.join(directory, "figures.json")
        command = [CHAOS, "--seed", SEED, "--duration", DURATION, *ARGUMENTS]
        command += ["--directory", directory, "--json", path]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, command, env=dict(os.environ), path=ROOT, reactor=reactor
        )
        output = (out + err).decode("utf-8", "replace")
        if not os.path.exists(path):
            raise AssertionError(f"bench/chaos.py exited {code} without figures:\n{output}")
        with open(path) as f:
            _figures.update(json.load(f))
        _figures["output"] = output
        _figures["exit_code"] = code
    return _figures


class ChaosSoakTests(TestCase):
    """Invariants of a bounded soak through a real gateway to failing backends."""

    timeout = 300

    async def figures(self) -> dict[str, Any]:
        figures = await soak_figures(self)
        self.assertTrue(figures["message_states"], figures["output"])
        return figures

    async def test_faults_of_every_kind_were_injected(self) -> None:
        """The run injected resets, stalls, 4xx, 5xx, slow replies and auth failures."""
        faults = (await self.figures())["faults_injected"]
        families = {name.split("@")[0].split("_")[0] for name, count in faults.items() if count}
        for family in ("reset", "stall", "rcpt", "data", "slow", "auth", "multiline"):
            self.assertIn(family, families, faults)

    async def test_every_message_settled(self) -> None:
        """Every message ended delivered or refused for good, with no session left hanging."""
        figures = await self.figures()
        states = figures["message_states"]
        self.assertEqual(states.get("delivered", 0) + states.get("bounced", 0), 150, states)
        self.assertEqual(figures["client_timeouts"], 0)

    async def test_no_acknowledged_message_lost(self) -> None:
        """Every message a client got 2xx for reached a backend, byte for byte, in that attempt."""
        figures = await self.figures()
        self.assertEqual((figures["lost"], figures["corrupted"]), (0, 0), figures["examples"])

    async def test_no_message_duplicated(self) -> None:
        """No attempt was committed twice by the backends."""
        figures = await self.figures()
        self.assertEqual(figures["duplicated"], 0, figures["examples"])

    async def test_no_5xx_for_a_temporary_fault(self) -> None:
        """Every 5xx a client saw was a backend's own 5xx for that transaction."""
        figures = await self.figures()
        self.assertEqual(figures["5xx_for_temporary"], 0, figures["examples"])

    async def test_descriptors_back_to_baseline(self) -> None:
        """The gateway's open descriptors return to their count before the soak."""
        figures = await self.figures()
        self.assertTrue(figures["invariants"]["descriptors"], figures["output"])

    async def test_rss_back_to_baseline(self) -> None:
        """The gateway's RSS returns to its size before the soak, within the script's slack."""
        figures = await self.figures()
        self.assertTrue(figures["invariants"]["rss"], figures["output"])

    async def test_log_has_no_unhandled_error(self) -> None:
        """The gateway logged no traceback and no unhandled error in a Deferred."""
        figures = await self.figures()
        self.assertEqual(figures["log_bad_lines"], 0, figures["log_examples"])

    async def test_backend_acceptance_always_relayed(self) -> None:
        """A backend's 250 for a message always reached the client that sent it."""
        figures = await self.figures()
        self.assertEqual(figures["backend_2xx_not_relayed"], 0, figures["examples"])

    async def test_half_closing_client_gets_its_replies(self) -> None:
        """A client that shut down its sending side still got the replies to its commands."""
        figures = await self.figures()
        self.assertGreater(figures["half_close_sessions"], 0)
        self.assertEqual(figures["half_close_replies_lost"], 0)

    async def test_script_exit_status_says_whether_invariants_hold(self) -> None:
        """bench/chaos.py exits 0 exactly when every invariant held (1 otherwise)."""
        figures = await self.figures()
        self.assertEqual(figures["exit_code"], 0 if figures["ok"] else 1, figures["output"])
