"""HTTP/1.1 responses on one keep-alive connection: a parser without I/O and a thin protocol.

The auth lookup sends one small GET and reads one small answer, thousands of times a second,
over a few pooled connections. Twisted's C{HTTP11ClientProtocol} does that through a
C{LineReceiver}-based parser, a L{Deferred} per stage, a C{Request} object that re-writes the
headers and a C{Response} with its producer proxies: with its pool and C{Agent}, most of the
0.12 to 0.16 ms of CPU per message that the lookup cost at 1 KiB x 50 (``bench/profile``,
docs/performance.md). This module does only what auth_http needs; measured in-process, a
whole lookup through the router and treq costs about a third of what it did on Twisted's
agent:

 - L{ResponseParser} reads a status line, header lines and a C{Content-Length}, C{chunked} or
   read-until-close body from bytes fed to it, and refuses what an auth service has no reason
   to send and what would make the framing ambiguous: 1xx answers (101 upgrades included),
   folded header lines, a C{Transfer-Encoding} other than C{chunked}, C{Transfer-Encoding} with
   C{Content-Length}, conflicting C{Content-Length}s, lines over 16 KiB (Twisted's limit) and
   more than 100 header lines;
 - L{HTTPConnection} writes a request already rendered to bytes and hands the answer to its
   L{Exchange} as a L{WireResponse}, an L{IResponse} whose body goes to the protocol given to
   C{deliverBody}, as with Twisted's agent (treq's C{_Response} wraps it unchanged).

The pool, the retry of a stale connection and the L{IAgent} are in L{relaygate.routing.http_agent}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import Any, Final
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone  # the end of a body, as Twisted's agent says it
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from typing_extensions import override
from zope.interface import implementer

from relaygate.routing.raw_headers import canonical_name, headers_from_raw, known_names
from relaygate.write_now import write_soon

MAX_LINE: Final = 16 * 1024
MAX_HEADERS: Final = 100
# A chunk size or Content-Length with more digits is not an auth answer.
_MAX_DIGITS: Final = 15

_STATUS: Final = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: (.*))?")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS: Final = re.compile(rb"[0-9]{1,%d}" % _MAX_DIGITS)
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,%d}" % _MAX_DIGITS)
_OWS: Final = b" \t"


class BadResponseError(Exception):
    """The bytes on the connection are not an HTTP/1.1 answer relaygate accepts."""


class _Body(Enum):
    """How the end of the body is found."""

    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    UNTIL_CLOSE = 3


class _State(Enum):
    HEAD = 0
    BODY = 1
    CHUNK_SIZE = 2
    CHUNK_DATA = 3
    CHUNK_END = 4
    TRAILER = 5
    DONE = 6


class ResponseHead:
    """The status line and headers of an answer, and how its body is framed."""

    __slots__ = ("code", "headers", "keep_alive", "length", "phrase", "version")

    def __init__(
        self,
        version: tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        headers: Headers,
        length: int | None,
        keep_alive: bool,
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        # The Content-Length, or None for chunked and read-until-close bodies.
        self.length = length
        # Whether the connection may carry another request once the body is read.
        self.keep_alive = keep_alive


class ResponseParser:
    """Parse one HTTP/1.x answer from bytes fed in any split.

    L{feed} returns the L{ResponseHead} once the header block is complete (once), calls
    C{on_body} with each piece of body, and sets L{done} when the body has ended; bytes after
    the end are kept in L{leftover}. A malformed answer raises L{BadResponseError}.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_header_lines",
        "_left",
        "_lines",
        "_on_body",
        "_state",
        "done",
        "head",
        "leftover",
    )

    def __init__(self, on_body: Callable[[bytes], object]) -> None:
        self._on_body = on_body
        self._buffer = b""
        self._state = _State.HEAD
        self._lines: list[bytes] = []
        self._header_lines = 0
        self._body = _Body.NONE
        self._left = 0
        self.head: ResponseHead | None = None
        self.done = False
        self.leftover = b""

    def feed(self, data: bytes) -> ResponseHead | None:
        """Parse C{data}; return the head if this call completed it.

        The call that completes the head stops there: the body that came with it is parsed by
        the next call (C{feed(b"")} will do).
        """
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        if self._state is _State.HEAD:
            rest = self._parse_head(data)
            if self.head is None:
                return None
            # The body waits for the next call, so the head's reader can get ready for it.
            if self.done:
                self.leftover = rest
            else:
                self._buffer = rest
            return self.head
        while data and not self.done:
            data = self._parse_body(data)
        if self.done:
            self.leftover += data
        return None

    def end_of_input(self) -> bool:
        """The connection closed: whether that completes the answer (a read-until-close body)."""
        if self._state is _State.BODY and self._body is _Body.UNTIL_CLOSE:
            self._state = _State.DONE
            self.done = True
        return self.done

    def _parse_head(self, data: bytes) -> bytes:
        if not self._lines and data[:1] not in (b"\r", b"\n"):
            # The usual case, a whole head in one read with CRLF line ends only: one search
            # and one split. Each line then fits, and no bare CR or LF hides inside one.
            end = data.find(b"\r\n\r\n")
            if 0 < end <= MAX_LINE:
                block = data[:end]
                crlf = block.count(b"\r\n")
                if crlf <= MAX_HEADERS and block.count(b"\r") == crlf == block.count(b"\n"):
                    self.head = self._head(block.split(b"\r\n"))
                    return data[end + 4 :]
        return self._parse_head_lines(data)

    def _parse_head_lines(self, data: bytes) -> bytes:
        """The general case: lines in any split, ending in CRLF or LF, checked one by one."""
        position = 0
        lines = self._lines
        while True:
            end = data.find(b"\n", position)
            if end < 0:
                if len(data) - position > MAX_LINE:
                    raise BadResponseError("header line too long")
                self._buffer = data[position:]
                return b""
            line = data[position:end]
            position = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_LINE:
                raise BadResponseError("header line too long")
            if b"\r" in line:
                raise BadResponseError("bare CR in a header line")
            if not line:
                if not lines:
                    # RFC 9112 2.2: an empty line before the status line may be skipped.
                    continue
                self.head = self._head(lines)
                self._lines = []
                return data[position:]
            lines.append(line)
            if len(lines) > MAX_HEADERS + 1:
                raise BadResponseError("too many header lines")

    def _head(self, lines: list[bytes]) -> ResponseHead:
        status = _STATUS.fullmatch(lines[0])
        if status is None:
            raise BadResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        minor = int(status[1])
        code = int(status[2])
        if code < 200:
            raise BadResponseError(f"informational answer {code}")
        raw: dict[bytes, list[bytes]] = {}
        known = known_names
        for index in range(1, len(lines)):
            name, colon, value = lines[index].partition(b":")
            key = known.get(name)
            if key is None:
                if not colon:
                    raise BadResponseError(f"not a header line: {lines[index][:80]!r}")
                if _TOKEN.fullmatch(name) is None:
                    # Folded lines (starting with a space) and names with spaces land here.
                    raise BadResponseError(f"not a header name: {name[:80]!r}")
                key = canonical_name(name)
            elif not colon:
                raise BadResponseError(f"not a header line: {lines[index][:80]!r}")
            values = raw.get(key)
            if values is None:
                raw[key] = [value.strip(_OWS)]
            else:
                values.append(value.strip(_OWS))
        keep_alive = minor >= 1
        for value in raw.get(b"Connection", ()):
            lowered = value.lower()
            if lowered != b"keep-alive" and b"close" in [
                token.strip(_OWS) for token in lowered.split(b",")
            ]:
                keep_alive = False
        length = self._framing(raw, code)
        if self._body is _Body.UNTIL_CLOSE:
            keep_alive = False
        phrase = status[3] or b""
        headers = headers_from_raw(raw)
        return ResponseHead((b"HTTP", 1, minor), code, phrase, headers, length, keep_alive)

    def _framing(self, raw: dict[bytes, list[bytes]], code: int) -> int | None:
        """Decide how the body ends (RFC 9112 6.3); return the Content-Length, if any."""
        encodings = raw.get(b"Transfer-Encoding")
        lengths = raw.get(b"Content-Length")
        if code in (204, 304):
            self._body = _Body.NONE
            self._finish()
            return 0 if lengths else None
        if encodings is not None:
            if lengths is not None:
                raise BadResponseError("both Transfer-Encoding and Content-Length")
            if [value.strip(_OWS).lower() for value in encodings] != [b"chunked"]:
                raise BadResponseError(f"unsupported Transfer-Encoding {encodings!r}")
            self._body = _Body.CHUNKED
            self._state = _State.CHUNK_SIZE
            return None
        if lengths is not None:
            if len(lengths) == 1 and lengths[0].isdigit() and len(lengths[0]) <= _MAX_DIGITS:
                left = int(lengths[0])
            else:
                found = {part.strip(_OWS) for value in lengths for part in value.split(b",")}
                if len(found) != 1:
                    raise BadResponseError(f"conflicting Content-Length {lengths!r}")
                [text] = found
                if _DIGITS.fullmatch(text) is None:
                    raise BadResponseError(f"invalid Content-Length {text[:80]!r}")
                left = int(text)
            self._left = left
            self._body = _Body.LENGTH
            if left:
                self._state = _State.BODY
            else:
                self._finish()
            return left
        self._body = _Body.UNTIL_CLOSE
        self._state = _State.BODY
        return None

    def _finish(self) -> None:
        self._state = _State.DONE
        self.done = True

    def _parse_body(self, data: bytes) -> bytes:
        state = self._state
        if state is _State.BODY:
            if self._body is _Body.UNTIL_CLOSE:
                self._on_body(data)
                return b""
            return self._take(data, _State.DONE)
        if state is _State.CHUNK_DATA:
            return self._take(data, _State.CHUNK_END)
        end = data.find(b"\n")
        if end < 0:
            if len(data) > MAX_LINE:
                raise BadResponseError("chunk line too long")
            self._buffer = data
            return b""
        line = data[:end].removesuffix(b"\r")
        rest = data[end + 1 :]
        if state is _State.CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip(_OWS)
            if _HEX.fullmatch(size) is None:
                raise BadResponseError(f"invalid chunk size {line[:80]!r}")
            self._left = int(size, 16)
            self._state = _State.CHUNK_DATA if self._left else _State.TRAILER
        elif state is _State.CHUNK_END:
            if line:
                raise BadResponseError("chunk data longer than its size")
            self._state = _State.CHUNK_SIZE
        elif line:  # a trailer field: read and ignored, as Twisted's agent does
            self._header_lines += 1
            if self._header_lines > MAX_HEADERS:
                raise BadResponseError("too many trailer lines")
        else:
            self._finish()
        return rest

    def _take(self, data: bytes, after: _State) -> bytes:
        left = self._left
        if len(data) < left:
            self._left = left - len(data)
            self._on_body(data)
            return b""
        if left:
            self._on_body(data[:left])
        self._left = 0
        if after is _State.DONE:
            self._finish()
        else:
            self._state = after
        return data[left:]


class Exchange(TypingProtocol):
    """What a connection reports to the request it carries (L{relaygate.routing.http_agent})."""

    def response_received(self, response: WireResponse) -> None:
        """The head of the answer arrived."""

    def request_failed(self, reason: Failure, nothing_received: bool) -> None:
        """The request failed before the head; C{nothing_received}: not one byte came back."""

    def connection_done(self, connection: HTTPConnection, reusable: bool) -> None:
        """The answer ended (or failed) and C{connection} can serve again, or not."""


@implementer(IPushProducer)
class _BodyProducer:
    """What the body's protocol sees as its transport: stopping it drops the connection.

    Once the body has ended the connection may already serve the next request, so then these
    do nothing.
    """

    def __init__(self, connection: HTTPConnection, response: WireResponse) -> None:
        self._connection = connection
        self._response = response

    def pauseProducing(self) -> None:
        """Stop reading the connection."""
        transport = self._connection.transport
        if transport is not None and self._response.reading:
            transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """Read the connection again."""
        transport = self._connection.transport
        if transport is not None and self._response.reading:
            transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        """Give up on the body: the connection is closed, not reused."""
        if self._response.reading:
            self._connection.abandon()


@implementer(IResponse)
class WireResponse:
    """An answer's status and headers, and its body for whoever calls C{deliverBody}.

    Body bytes that arrive before C{deliverBody} are kept, as Twisted's C{Response} does.
    """

    request: Any = None
    previousResponse: Any = None

    def __init__(self, head: ResponseHead, connection: HTTPConnection) -> None:
        self.version = head.version
        self.code = head.code
        self.phrase = head.phrase
        self.headers = head.headers
        self.length: int | object = UNKNOWN_LENGTH if head.length is None else head.length
        self._connection = connection
        self._protocol: Protocol | None = None
        self._delivered = False
        self._early: list[bytes] = []
        self._end: Failure | None = None

    def deliverBody(self, protocol: Protocol) -> None:  # noqa: N802 (IResponse's name)
        """Send the body to C{protocol}, then its C{connectionLost} with how it ended."""
        if self._delivered:
            raise RuntimeError("the body was already delivered")
        self._delivered = True
        protocol.makeConnection(_BodyProducer(self._connection, self))  # type: ignore[arg-type]
        early, self._early = self._early, []
        for data in early:
            protocol.dataReceived(data)
        if self._end is not None:
            protocol.connectionLost(self._end)
        else:
            # Held only until the body ends: the protocol's transport refers back to this.
            self._protocol = protocol

    @property
    def reading(self) -> bool:
        """Whether the body is still coming."""
        return self._end is None

    def setPreviousResponse(self, response: IResponse) -> None:  # noqa: N802 (IResponse's name)
        """Redirects are not followed here; kept for L{IResponse}."""
        self.previousResponse = response

    def body_received(self, data: bytes) -> None:
        """A piece of the body came."""
        if self._protocol is None:
            self._early.append(data)
        else:
            self._protocol.dataReceived(data)

    def body_ended(self, reason: Failure) -> None:
        """The body ended: L{ResponseDone}, L{PotentialDataLoss} or a failure."""
        if self._end is not None:
            return
        self._end = reason
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


# One for all answers: its receivers only look at it (Twisted's agent makes a new one each time).
_RESPONSE_DONE: Final = Failure(ResponseDone("Response body fully received"))


class HTTPConnection(Protocol):
    """One HTTP/1.1 client connection: one request at a time, then idle until the next."""

    def __init__(self) -> None:
        self._exchange: Exchange | None = None
        self._parser: ResponseParser | None = None
        self._response: WireResponse | None = None
        self._received = False
        self._reusable = False
        self._aborted = False
        self.lost = False
        self.idle_since = 0.0
        # Called once when the connection is lost (the agent's pool forgets it then).
        self.on_lost: Callable[[HTTPConnection], object] | None = None

    def send(self, request: bytes, exchange: Exchange) -> None:
        """Write C{request} (the whole rendered request) and report its answer to C{exchange}."""
        assert self.transport is not None
        self._exchange = exchange
        self._parser = ResponseParser(self._body_received)
        self._response = None
        self._received = False
        write_soon(self.transport, request)

    def abandon(self) -> None:
        """Drop the connection now, whatever it was doing: it will not be reused."""
        self._reusable = False
        self._parser = None
        self._aborted = True
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    @property
    def usable(self) -> bool:
        """Whether the connection can carry a request: not lost, closed or dropped."""
        return not (self.lost or self._aborted or self.transport is None) and not getattr(
            self.transport, "disconnecting", False
        )

    def close(self) -> None:
        """Close an idle connection."""
        if self.transport is not None and not self.lost:
            self.transport.loseConnection()

    @override
    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes nobody asked for (or after an abandoned answer): never reuse this one.
            self.abandon()
            return
        self._received = True
        try:
            head = parser.feed(data)
            if head is not None:
                self._reusable = head.keep_alive
                response = self._response = WireResponse(head, self)
                exchange = self._exchange
                assert exchange is not None
                if parser.done:
                    # No body (Content-Length: 0, 204, 304): the connection goes back first,
                    # so the reader of the body finds it ended as soon as it asks.
                    self._complete(reusable=self._reusable and not parser.leftover)
                    exchange.response_received(response)
                    return
                exchange.response_received(response)
                if self._parser is not parser:
                    return
                parser.feed(b"")
            if parser.done and self._parser is parser:
                self._complete(reusable=self._reusable and not parser.leftover)
        except BadResponseError:
            self._fail(Failure())

    def _body_received(self, data: bytes) -> None:
        if self._response is not None:
            self._response.body_received(data)

    def _complete(self, reusable: bool) -> None:
        """The answer ended: hand the connection back before the body's reader hears it."""
        response, exchange = self._response, self._exchange
        self._parser = None
        self._response = None
        self._exchange = None
        if not reusable:
            self.close()
        if exchange is not None:
            exchange.connection_done(self, reusable and not self.lost)
        if response is not None:
            response.body_ended(_RESPONSE_DONE)

    def _fail(self, reason: Failure) -> None:
        """The answer cannot be read: fail whoever waits for it and drop the connection."""
        response, exchange = self._response, self._exchange
        nothing = not self._received
        self._parser = None
        self._response = None
        self._exchange = None
        self.abandon()
        if exchange is not None:
            if response is None:
                wrapped = ResponseNeverReceived([reason]) if nothing else ResponseFailed([reason])
                exchange.request_failed(Failure(wrapped), nothing)
            exchange.connection_done(self, False)
        if response is not None:
            response.body_ended(Failure(ResponseFailed([reason])))

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        parser = self._parser
        if parser is not None:
            if self._response is not None and parser.end_of_input():
                response, exchange = self._response, self._exchange
                self._parser = None
                self._response = None
                self._exchange = None
                if exchange is not None:
                    exchange.connection_done(self, False)
                response.body_ended(Failure(PotentialDataLoss()))
            else:
                self._fail(reason)
        elif self._response is not None:
            self._fail(reason)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(self)
