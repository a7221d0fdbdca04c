"""C{bench/profile}'s reading of py-spy's stacks: which samples count, and where they go."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = "/venv/lib/python3.11/site-packages"


def _load_profile() -> ModuleType:
    """The script as a module (it has no C{.py} suffix, so it needs its own loader)."""
    path = os.path.join(ROOT, "bench", "profile")
    loader = importlib.machinery.SourceFileLoader("bench_profile", path)
    spec = importlib.util.spec_from_loader("bench_profile", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


profile = _load_profile()

TWISTD = 'process 10:"python twistd -n relaygate"'
WORKER = 'process 11:"python -m relaygate.workers --worker 0"'
SEND = "write_now (/src/relaygate/write_now.py:41)"
TCP = f"{SITE}/twisted/internet/tcp.py"
DISPATCH = f"_do_poll (/src/relaygate/dispatch.py:50);Connection.doRead ({TCP}:278)"


class ParseRawTests(TestCase):
    """Only the reactor's work counts, in twistd and in its workers alike."""

    def _parse(self, text: str) -> list[tuple[list[str], int]]:
        path = Path(self.mktemp())
        path.write_text(text)
        stacks: list[tuple[list[str], int]] = profile.parse_raw(path)
        return stacks

    def test_twistd_and_worker_loops(self) -> None:
        """
        A stack under twistd's C{run} and one under a worker's C{ReactorBase.run} are both
        kept, with their counts and without the process frames.
        """
        raw = (
            f"{TWISTD};run (/src/twisted/application/app.py:300);"
            f"mainLoop ({SITE}/twisted/internet/base.py:694);{SEND} 7\n"
            f"{TWISTD};{WORKER};main (/src/relaygate/workers.py:574);"
            f"ReactorBase.run ({SITE}/twisted/internet/base.py:686);"
            f"ReactorBase.mainLoop ({SITE}/twisted/internet/base.py:694);{DISPATCH} 5\n"
        )
        stacks = self._parse(raw)
        self.assertEqual([count for _, count in stacks], [7, 5])
        self.assertFalse(any(f.startswith("process ") for frames, _ in stacks for f in frames))

    def test_start_up_is_left_out(self) -> None:
        """A stack outside the reactor's loop (imports, configuration) is not counted."""
        raw = f"{WORKER};<module> (/src/relaygate/workers.py:10);load (/src/load.py:40) 9\n"
        self.assertEqual(self._parse(raw), [])


class ClassifyTests(TestCase):
    """Each sample goes to the group of its innermost frame that belongs to one."""

    def test_worker_read(self) -> None:
        """A worker's socket read is reactor i/o, decided by Twisted's C{doRead}."""
        frames = ["ReactorBase.run (x)", *DISPATCH.split(";")]
        group, frame = profile.classify(frames)
        self.assertEqual(group, "reactor i/o")
        self.assertIn("Connection.doRead", frame)

    def test_send(self) -> None:
        """The direct sends are reactor i/o too."""
        self.assertEqual(profile.classify(["run (x)", SEND])[0], "reactor i/o")
