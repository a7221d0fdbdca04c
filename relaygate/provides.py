"""Give a wrapper the interfaces of the transport below it, building the declaration once.

A protocol that stands in as its wrapped protocol's transport (TLS, PROXY, limits, operations)
must provide what the transport below provides (L{ISSLTransport} after STARTTLS, and so on), so
code above can ask. C{zope.interface.directlyProvides} builds a new C{Provides} declaration,
resolution order included, whenever no live object holds an equal one. Measured on the TLS
bench (docs/performance.md, "TLS handshakes and AUTH logins"), that was about 70 us of a TLS
session (11 to 13 calls). The declaration is immutable and depends only on the wrapper's class
and the transport's specification, so L{provide_like} builds it once per pair and then hands
the same object to every wrapper of that class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import directlyProvides
from zope.interface.declarations import Declaration

Declare = Callable[[Any, Declaration], None]

# Distinct (class, specification) pairs are few: one per wrapper class and transport kind
# (TCP, TLS, PROXY, before and after STARTTLS). The bound only guards against a caller that
# hands in a new specification per connection.
_LIMIT = 256
_declarations: dict[tuple[type, Declaration, Declare], Any] = {}


def provide_like(target: Any, spec: Declaration, declare: Declare = directlyProvides) -> None:
    """Do C{declare(target, spec)}, reusing what it declared for an earlier C{target} of the
    same class with the same C{spec}.

    @param spec: what the transport provides, C{providedBy(transport)}.
    @param declare: how C{target} gets C{spec}'s interfaces; the default declares them all.
    """
    key = (type(target), spec, declare)
    declared = _declarations.get(key)
    if declared is not None:
        # The attribute directlyProvides itself sets (zope.interface.declarations).
        target.__provides__ = declared
        return
    declare(target, spec)
    if len(_declarations) < _LIMIT:
        # Keeping the spec in the key also keeps it alive, so it never names another object.
        _declarations[key] = target.__provides__
