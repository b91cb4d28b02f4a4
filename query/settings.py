"""Typed settings of the query room's backends, parsed once from a config ``options`` mapping.

Every resolver and metadata store type declares a frozen dataclass of its own settings, each
field naming its config key with ``option``; ``read_settings(Settings, options, where)`` builds
it when the backend is built for a config, and the backend never reads the mapping again. The field's
annotation says how the value is read:

- ``str``: required, non-empty; ``str | None``: optional (absent or ``""`` is None);
- ``float``: a number, the field's default when absent;
- ``Mapping[str, str]``: names to strings, empty when absent.

The config schema has already checked the shapes at load; a value of the wrong type here (a
config built around the schema) is a ``ConfigError`` naming the key, never a ``KeyError`` or
``TypeError`` at the first request.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeVar

from schemas.errors import ConfigError

T = TypeVar("T")
Reader = Callable[[Mapping[str, Any], str, Any, str], Any]


def option(key: str, default: Any = dataclasses.MISSING) -> Any:
    """A settings field read from ``key`` of the options (``default`` when absent)."""
    return dataclasses.field(default=default, metadata={"key": key})


def read_settings(cls: type[T], options: Mapping[str, Any], where: str) -> T:
    """``cls`` (a dataclass of ``option`` fields) from ``options``; ``where`` names the
    backend in errors, e.g. ``variation 'v1'``."""
    values = {
        name: read(options, key, default, where)
        for name, key, default, read in _readers(cls)  # type: ignore[arg-type]
    }
    return cls(**values)


@cache
def _readers(cls: type) -> tuple[tuple[str, str, Any, Reader], ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        reader = _READERS.get(hints[f.name])
        if reader is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no reader for {hints[f.name]}")
        out.append((f.name, f.metadata["key"], f.default, reader))
    return tuple(out)


def _text(options: Mapping[str, Any], key: str, default: Any, where: str) -> str:
    value = options.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def _optional_text(options: Mapping[str, Any], key: str, default: Any, where: str) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be a string")
    return value


def _number(options: Mapping[str, Any], key: str, default: Any, where: str) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: '{key}' must be a number")
    return float(value)


def _strings(options: Mapping[str, Any], key: str, default: Any, where: str) -> Mapping[str, str]:
    value = options.get(key) or {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where}: '{key}' must map names to strings")
    return dict(value)


_READERS: dict[Any, Reader] = {
    str: _text,
    str | None: _optional_text,
    typing.Optional[str]: _optional_text,  # noqa: UP045 - how get_type_hints may spell it
    float: _number,
    Mapping[str, str]: _strings,
}
