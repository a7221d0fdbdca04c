"""A TOML table being read: typed getters that word errors as C{FILE: key: what is wrong}."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from relaygate.addresses import HostPort, parse_host_port
from relaygate.config.errors import ConfigError

MISSING: Any = object()


class Table:
    """A TOML table being read: typed getters that report errors by key, and unknown keys."""

    def __init__(self, file: str, prefix: str, data: dict[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    def error(self, key: str, what: str) -> ConfigError:
        """Build the error for C{key} in this table."""
        return ConfigError(f"{self.file}: {self.prefix}{key}: {what}")

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is MISSING:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise self.error(key, f"expected {kind_name}, got {value!r}")
        return value

    def string(self, key: str, default: str = MISSING) -> str:
        value: str = self._get(key, default, (str,), "a string")
        if any(c in value for c in "\r\n\0"):
            raise self.error(key, "must not contain CR, LF or NUL")
        return value

    def number(self, key: str, default: float = MISSING, minimum: float = 0.0) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, got {value:g}")
        return value

    def integer(self, key: str, default: int = MISSING, minimum: int = 0) -> int:
        value: int = self._get(key, default, (int,), "an integer")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def boolean(self, key: str, default: bool = MISSING) -> bool:
        value: bool = self._get(key, default, (bool,), "true or false")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str = MISSING) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}; got {value!r}")
        return value

    def strings(self, key: str, default: Iterable[str] = MISSING) -> tuple[str, ...]:
        value = self._get(key, default, (list, tuple), "a list of strings")
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"expected a list of strings, got item {item!r}")
            if any(c in item for c in "\r\n\0"):
                raise self.error(key, "must not contain CR, LF or NUL")
        return tuple(value)

    def choices(
        self, key: str, choices: Sequence[str], default: Iterable[str] = MISSING
    ) -> tuple[str, ...]:
        values = self.strings(key, default)
        for value in values:
            if value not in choices:
                raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return values

    def address(self, key: str, default: HostPort = MISSING, any_port: bool = False) -> HostPort:
        if key not in self.data and default is not MISSING:
            self.used.add(key)
            return default
        text = self.string(key)
        try:
            return parse_host_port(text, any_port=any_port)
        except ValueError as e:
            raise self.error(key, f"{text!r}: {e}") from None

    def table(self, key: str) -> Table:
        value = self._get(key, {}, (dict,), "a table")
        return Table(self.file, f"{self.prefix}{key}.", value)

    def tables(self, key: str) -> list[Table]:
        value = self._get(key, [], (list,), "an array of tables ([[" + key + "]])")
        result = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(key, f"expected [[{key}]] tables, got {item!r}")
            result.append(Table(self.file, f"{self.prefix}{key}[{index}].", item))
        return result

    def path(self, key: str, base: str, default: str = "") -> str:
        """A file path, relative to the config file's directory, that must exist if set."""
        value = self.string(key, default)
        if not value or value == "system":
            return value
        full = os.path.normpath(os.path.join(base, value))
        if not os.path.exists(full):
            raise self.error(key, f"{value!r} does not exist")
        return full

    def finish(self) -> None:
        """Refuse keys this table does not know (a typo must not be silently ignored)."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")
