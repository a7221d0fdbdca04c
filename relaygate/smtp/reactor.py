"""The reactor interfaces an SMTP front session uses: time (timers, the clock) and TCP
(backend connections through endpoints)."""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IReactorTCP, IReactorTime


class ISMTPReactor(IReactorTime, IReactorTCP):
    """What the SMTP front needs of a reactor, for the type checker (like treq's
    C{_ITreqReactor})."""


def smtp_reactor(reactor: IReactorTime) -> ISMTPReactor:
    """C{reactor} as an L{ISMTPReactor}, once it is known to provide TCP too.

    A zope interface cannot say "provides both" to the type checker: real and memory reactors
    declare each interface apart. The check here is what makes the cast true.

    @raise TypeError: C{reactor} does not provide L{IReactorTCP}.
    """
    if not IReactorTCP.providedBy(reactor):
        raise TypeError(f"{reactor!r} does not provide IReactorTCP")
    return cast(ISMTPReactor, reactor)
