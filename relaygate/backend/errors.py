"""Why a backend leg failed: one hierarchy for SMTP, IMAP and POP3.

Every one of these is temporary for the client (SMTP 4xx, IMAP/POP3 "internal server error"):
the backend, not the client, is at fault.
"""

from __future__ import annotations


class BackendError(Exception):
    """The backend broke the protocol, went away or was too slow: the session can't go on."""


class BackendLost(BackendError):
    """The backend closed the connection or stopped answering."""


class BackendUnreachable(BackendError):
    """No backend of the route accepted a connection."""


class BackendTLSError(BackendError):
    """TLS to the backend failed or is not offered where it is required: never fall back."""


class BackendTLSNotOffered(BackendTLSError):
    """C{backend_tls = "required"}, and the backend does not offer (or refuses) STARTTLS."""
