"""L{Headers} built from names and values that are already right, without checking them again.

L{Headers.addRawHeader} canonicalises each name and rewrites CR and LF in each value, on every
call. The auth lookup builds its request from names written in canonical case and values it
has escaped or checked, and reads answers whose lines the parser has already split and checked:
at thousands of lookups a second, the second pass is measurable (``bench/profile``).
"""

from __future__ import annotations

from typing import Final

from twisted.web.http_headers import Headers


def _raw_headers_settable() -> bool:
    """Whether a L{Headers} keeps its values in C{_rawHeaders}, a dict of canonical names.

    L{headers_from_raw} hands it a dict directly. It is private to Twisted, so this checks,
    once, that it still means what it meant in Twisted 26.10; if not, the public API is used.
    """
    probe = Headers()
    try:
        probe._rawHeaders = {b"X-Probe": [b"1"]}
    except AttributeError:
        return False
    return probe.getRawHeaders(b"x-probe") == [b"1"] and list(probe.getAllRawHeaders()) == [
        (b"X-Probe", [b"1"])
    ]


_RAW_HEADERS: Final = _raw_headers_settable()


def headers_from_raw(raw: dict[bytes, list[bytes]]) -> Headers:
    """A L{Headers} that takes C{raw} (canonical names to their values, in order) as it is.

    Every name must already be in Twisted's canonical case (L{canonical_name}) and no value may
    hold CR or LF: the caller has checked them.
    """
    if _RAW_HEADERS:
        headers = Headers()
        headers._rawHeaders = raw
        return headers
    return _public_headers(raw)


def _public_headers(raw: dict[bytes, list[bytes]]) -> Headers:
    headers = Headers()
    for name, values in raw.items():
        headers.setRawHeaders(name, values)
    return headers


known_names: dict[bytes, bytes] = {}
_MAX_CANONICAL: Final = 1024


def canonical_name(name: bytes) -> bytes:
    """C{name} in the case L{Headers} stores it (C{Client-IP} becomes C{Client-Ip}).

    Asked of Twisted once per name (its rules have exceptions such as C{ETag}), then cached;
    the cache is bounded, since the names in answers come from the network.
    """
    known = known_names.get(name)
    if known is not None:
        return known
    probe = Headers()
    probe.addRawHeader(name, b"")
    [(result, _)] = probe.getAllRawHeaders()
    if len(known_names) < _MAX_CANONICAL:
        known_names[name] = result
    return result
