"""Reading a backend's typed settings out of its config ``options`` mapping.

Every resolver and metadata store type has a frozen dataclass of its own settings, with a
``parse`` classmethod built from these readers; the backend parses its options once, when it is
built for a config, and never reads the mapping again. The config schema has already checked
the shapes at load; a value of the wrong type here (a config built around the schema) is a
``ConfigError`` naming the key, not a ``KeyError`` or ``TypeError`` at the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.errors import ConfigError


def text(options: Mapping[str, Any], key: str, where: str) -> str:
    """A required, non-empty string."""
    value = options.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def optional_text(options: Mapping[str, Any], key: str, where: str) -> str | None:
    """A string, or None when absent (or empty, which the options use for "not set")."""
    value = options.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be a string")
    return value


def number(options: Mapping[str, Any], key: str, default: float, where: str) -> float:
    """A number, ``default`` when absent."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: '{key}' must be a number")
    return float(value)


def strings(options: Mapping[str, Any], key: str, where: str) -> Mapping[str, str]:
    """A mapping of strings to strings, empty when absent."""
    value = options.get(key) or {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where}: '{key}' must map names to strings")
    return dict(value)
