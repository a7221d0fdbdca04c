"""The IMAP/POP3 login's use of C{[limits]}: failed logins counted per client address.

A failing limit store (a networked one may) is logged and treated as "not over the limit":
the limits protect the auth service, they must not lock every client out when they fail.
"""

from __future__ import annotations

from twisted.logger import Logger

from relaygate.policy import limits_for

_log = Logger(namespace="relaygate.login.limits")


async def auth_blocked(transport: object, ip: str) -> bool:
    """Whether the client at C{ip} may not try another login now (C{auth_failures_per_hour})."""
    limits = limits_for(transport)
    if limits is None:
        return False
    try:
        return await limits.auth_blocked(ip)
    except Exception:
        _log.failure("limit store failed")
        return False


async def count_auth_failure(transport: object, ip: str) -> bool:
    """Count a refused login against C{ip}; whether that reached the address's limit.

    When it did, the session ends after its answer, as an SMTP session does, instead of
    trying more passwords.
    """
    limits = limits_for(transport)
    if limits is None:
        return False
    try:
        return await limits.auth_failed(ip)
    except Exception:
        _log.failure("limit store failed")
        return False
