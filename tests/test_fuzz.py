"""The fuzz run (C{bench/fuzz.py}) as a bounded run on every test run.

One run of the script per test process (12 seconds of inputs, about 4 per protocol, spread over
the plain, STARTTLS and implicit-TLS listeners of SMTP, IMAP and POP3, then per protocol a
client that half-closes after pipelined commands and 5 seconds of a client that never reads
its replies), shared by the tests below; each test asserts one of the run's checks on the
figures the script wrote. The script starts a real C{twistd relaygate} with certificates made
at run time; C{docs/reliability.md} says how to run it longer.

The seed is fixed so a failure replays; set C{RELAYGATE_FUZZ_SEED} to try another one.
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
FUZZ = os.path.join(ROOT, "bench", "fuzz.py")
SEED = os.environ.get("RELAYGATE_FUZZ_SEED", "11")
ARGUMENTS = ["--seconds", "12", "--concurrency", "4", "--flood-seconds", "5"]

_figures: dict[str, Any] = {}


async def fuzz_figures(case: TestCase) -> dict[str, Any]:
    """The figures of this process's fuzz run (run it on first use, in CASE's temp dir)."""
    if not _figures:
        directory = os.path.abspath(case.mktemp())
        path = os.path.join(directory, "figures.json")
        command = [FUZZ, "--seed", SEED, *ARGUMENTS, "--directory", directory, "--json", path]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, command, env=dict(os.environ), path=ROOT, reactor=reactor
        )
        output = (out + err).decode("utf-8", "replace")
        if not os.path.exists(path):
            raise AssertionError(f"bench/fuzz.py exited {code} without figures:\n{output}")
        with open(path) as f:
            _figures.update(json.load(f))
        _figures["output"] = output
        _figures["exit_code"] = code
    return _figures


class FuzzRunTests(TestCase):
    """Checks of a bounded fuzz run against every kind of listener."""

    timeout = 300

    async def test_every_listener_was_fuzzed(self) -> None:
        """Inputs reached all nine listeners, TLS garbage and partial ClientHellos included."""
        figures = await fuzz_figures(self)
        listeners = {
            f"{p}/{t}" for p in ("smtp", "imap", "pop3") for t in ("none", "starttls", "implicit")
        }
        self.assertEqual(set(figures["inputs_by_listener"]), listeners)
        for start in ("tls", "starttls", "garbage_hello", "partial_hello", "starttls_garbage"):
            self.assertIn(start, figures["starts"])
        self.assertGreater(figures["inputs"], 100)

    async def test_log_has_no_traceback(self) -> None:
        """The gateway logged no traceback and no unhandled error."""
        figures = await fuzz_figures(self)
        self.assertEqual(figures["log_bad_lines"], 0, figures["log_examples"])

    async def test_rss_bounded(self) -> None:
        """The gateway's RSS stayed within the script's limit of its size before the run."""
        figures = await fuzz_figures(self)
        self.assertTrue(figures["invariants"]["rss_bounded"], figures["output"])

    async def test_descriptors_back_to_baseline(self) -> None:
        """The gateway's open descriptors came back to their count before the run."""
        figures = await fuzz_figures(self)
        self.assertTrue(figures["invariants"]["descriptors"], figures["output"])

    async def test_gateway_still_works(self) -> None:
        """Afterwards smtplib (plain, STARTTLS), imaplib (TLS) and poplib (STLS) still work."""
        figures = await fuzz_figures(self)
        self.assertEqual(
            figures["checks_after"],
            {
                "smtp_plain": "ok",
                "smtp_starttls": "ok",
                "imap_implicit_tls": "ok",
                "pop3_stls": "ok",
            },
        )
        self.assertTrue(figures["invariants"]["gateway_alive"])

    async def test_client_that_does_not_read_is_paused(self) -> None:
        """Pipelining NOOPs without reading the replies does not grow the gateway's memory."""
        figures = await fuzz_figures(self)
        floods = figures["flood_without_reading"]
        self.assertEqual(set(floods), {"smtp", "imap", "pop3"})
        self.assertTrue(figures["invariants"]["flood_bounded"], floods)

    async def test_imap_and_pop3_answer_commands_pipelined_before_a_half_close(self) -> None:
        """IMAP and POP3 answer every command a client sent before shutting down its side."""
        replies = (await fuzz_figures(self))["half_close_replies"]
        self.assertEqual(replies["imap"], {"owed": 3, "got": 3})
        self.assertEqual(replies["pop3"], {"owed": 4, "got": 4})

    async def test_smtp_answers_commands_pipelined_before_a_half_close(self) -> None:
        """SMTP answers MAIL, RCPT and QUIT sent just before the client shut down its side."""
        replies = (await fuzz_figures(self))["half_close_replies"]
        self.assertEqual(replies["smtp"], {"owed": 5, "got": 5})

    async def test_script_exit_status_says_whether_checks_hold(self) -> None:
        """bench/fuzz.py exits 0 exactly when every check held (1 otherwise)."""
        figures = await fuzz_figures(self)
        self.assertEqual(figures["exit_code"], 0 if figures["ok"] else 1, figures["output"])
