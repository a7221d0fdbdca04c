"""The errors raised when a certificate, key or CA file cannot be used."""

from __future__ import annotations


class CertificateError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the problem."""


class PrivateKeyError(CertificateError):
    """The private key is missing, unreadable, encrypted, or not the certificate's."""
