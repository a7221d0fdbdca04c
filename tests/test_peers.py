"""Tests for the test peers' own rule (L{tests.peers}): a missing peer skips, but fails in CI."""

from __future__ import annotations

import os

from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

from tests.peers import in_ci, peer_missing, skip_unless_ci


class MissingPeerTests(SynchronousTestCase):
    """L{peer_missing} and L{skip_unless_ci} with and without C{CI} in the environment."""

    def set_ci(self, value: str | None) -> None:
        """Set (or unset) C{CI} for this test only."""
        saved = os.environ.get("CI")
        self.addCleanup(_restore, saved)
        _restore(value)

    def test_without_ci_a_missing_peer_skips(self) -> None:
        """Unset C{CI}: SkipTest, naming the program and its Debian package."""
        self.set_ci(None)
        with self.assertRaises(SkipTest) as caught:
            peer_missing("smtp-sink", "postfix")
        self.assertEqual(
            str(caught.exception), "smtp-sink is not installed (Debian package postfix)"
        )

    def test_with_ci_a_missing_peer_fails(self) -> None:
        """C{CI=true}: the test fails (not skips), still naming the Debian package."""
        self.set_ci("true")
        with self.assertRaises(FailTest) as caught:
            peer_missing("haproxy", "haproxy")
        self.assertEqual(
            str(caught.exception),
            "haproxy is not installed (Debian package haproxy); "
            "CI is set, so a missing peer fails the test",
        )

    def test_any_other_reason_follows_the_same_rule(self) -> None:
        """L{skip_unless_ci} skips or fails for any reason, the same way."""
        self.set_ci("1")
        self.assertRaises(FailTest, skip_unless_ci, "needs root")
        self.set_ci("")
        self.assertRaises(SkipTest, skip_unless_ci, "needs root")

    def test_false_values_are_not_ci(self) -> None:
        """C{CI} empty, C{0}, C{false} or C{no} is not CI; anything else is."""
        for value, expected in [
            (None, False),
            ("", False),
            ("0", False),
            ("false", False),
            ("No", False),
            ("true", True),
            ("1", True),
            ("yes", True),
        ]:
            self.set_ci(value)
            self.assertEqual(in_ci(), expected, value)


def _restore(value: str | None) -> None:
    if value is None:
        os.environ.pop("CI", None)
    else:
        os.environ["CI"] = value
