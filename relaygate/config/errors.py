"""The one error every configuration problem is reported as."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, already worded as ``FILE: key: what is wrong``."""
