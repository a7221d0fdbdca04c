"""The garbage collector's settings for a long-running gateway process.

Objects that refer to each other are freed by the cyclic collector rather than by reference
counts: an IMAP or POP3 session's, and every SMTP session's until its front learnt to let go
of its helpers when it closes. With CPython's defaults (a young collection every 700 net
allocations) such a session outlives several young collections, is promoted, and its garbage
then waits for full collections, each of which walks the whole heap: the modules, Twisted,
prometheus-client and the configuration. At 1 KiB x 50 that was about 9 % of the process's
CPU (docs/performance.md, "The third round").

So, once the reactor runs: the startup heap is collected and frozen (L{gc.freeze}: full
collections no longer walk it), and young collections come less often, so that a session is
usually over, and its cycle collected young, before it could be promoted twice.
"""

from __future__ import annotations

import gc
from typing import Any

YOUNG_THRESHOLD = 10_000
"""Net container allocations between young collections (CPython's default is 700); the
garbage held meanwhile is a few hundred sessions' worth at most, a few MiB."""


def tune_collector(reactor: Any) -> None:
    """When C{reactor} runs: collect and freeze the startup heap; collect young less often."""
    reactor.callWhenRunning(_tune)


def _tune() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
