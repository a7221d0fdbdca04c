"""The sessions view across workers: the parent asks each worker, each answers for its own.

With C{[server] workers} the metrics listener runs in the parent, but the sessions live in the
workers. The parent writes one JSON request per line to each worker's standard input
(C{{"op": "sessions"}} or C{{"op": "close", "user": ..., "id": ...}}, with a request number); the
worker answers with one JSON line (C{{"kind": "reply", "req": ..., "result": ...}}) on its
control channel, a pipe of its own to the parent (L{relaygate.workers}), apart from its log
lines. A worker that does not answer within C{timeout} is left out of the answer rather than
holding it up.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from typing_extensions import override

from relaygate.ops.sessions import KICK, SessionRegistry

REPLY_TIMEOUT = 2.0

_reply_log = Logger(namespace="relaygate.ops.control")


class WorkerControl(LineOnlyReceiver):
    """A worker's end: requests from the parent on stdin, answers through C{send}."""

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(
        self,
        sessions: SessionRegistry,
        send: Callable[[dict[str, Any]], None],
        parent_gone: Callable[[], object] | None = None,
    ) -> None:
        self._sessions = sessions
        self._send = send
        self._parent_gone = parent_gone

    def stopping(self) -> None:
        """The worker is stopping on its own: the end of stdin that follows is not news."""
        self._parent_gone = None

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        # Our stdin is the parent's pipe: its end means the parent is gone (even SIGKILLed),
        # and a worker must not serve on alone. Drain and stop, as on SIGTERM.
        if self._parent_gone is not None:
            _reply_log.warn("the parent process is gone; stopping")
            self._parent_gone()

    @override
    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            number = int(request["req"])
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            _reply_log.warn("bad control request {line!r}", line=line[:200])
            return
        result: Any
        if op == "sessions":
            result = [s.as_json() for s in self._sessions]
        elif op == "close":
            result = self._sessions.close(request.get("user"), request.get("id"), KICK)
        else:
            result = None
        self._send({"kind": "reply", "req": number, "result": result})


class ParentControl:
    """The parent's end: a L{relaygate.ops.sessions.SessionView} over every worker.

    @param writers: the live workers' stdin writers (called at request time).
    """

    def __init__(
        self,
        writers: Callable[[], Iterable[Callable[[bytes], None]]],
        clock: IReactorTime,
        timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self._writers = writers
        self._clock = clock
        self._timeout = timeout
        self._numbers = itertools.count(1)
        self._pending: dict[int, Deferred[Any]] = {}

    def reply_received(self, event: dict[str, Any]) -> None:
        """A worker's answer (a C{"reply"} message from its control channel)."""
        waiting = self._pending.pop(int(event.get("req", 0)), None)
        if waiting is not None and not waiting.called:
            waiting.callback(event.get("result"))

    def _no_answer(self, failure: object, number: int) -> None:
        # Timed out (or the worker could not be written to): left out of the answer.
        self._pending.pop(number, None)

    def _ask(self, request: dict[str, Any]) -> Deferred[list[Any]]:
        asked: list[Deferred[Any]] = []
        for write in self._writers():
            number = next(self._numbers)
            waiting: Deferred[Any] = Deferred()
            self._pending[number] = waiting
            waiting.addTimeout(self._timeout, self._clock)
            waiting.addErrback(self._no_answer, number)
            try:
                write(json.dumps({**request, "req": number}).encode() + b"\n")
            except Exception:
                self._pending.pop(number, None)
                waiting.cancel()
            asked.append(waiting)
        if not asked:
            return succeed([])
        gathered: Deferred[list[tuple[bool, Any]]] = DeferredList(asked, consumeErrors=True)
        return gathered.addCallback(
            lambda results: [value for ok, value in results if ok and value is not None]
        )

    def snapshot(self) -> Deferred[list[dict[str, Any]]]:
        """Every worker's open sessions, in one list."""
        return self._ask({"op": "sessions"}).addCallback(
            lambda lists: [session for sessions in lists for session in sessions]
        )

    def close_matching(self, user: str | None, session_id: str | None) -> Deferred[int]:
        """Close the matching sessions in every worker; the total closed."""
        return self._ask({"op": "close", "user": user, "id": session_id}).addCallback(sum)
