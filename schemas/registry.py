"""Named types, one registry mechanism for all of them: targets, dead-letter stores, experiment
stores, checkpoint stores (and, when the query room takes it up, resolvers and metadata stores).

A ``Registry`` maps a config's type name (or a URI scheme) to where its implementation lives,
``"module:attribute"``, imported only when a config uses the type, so that an unused type's
dependencies are never loaded. Adding a type is one module plus one line in its registry; the
code that builds things looks the type up here instead of branching on it.

Typed settings: an implementation carries its settings as a ``Settings`` class (a frozen
dataclass, the ``Settings`` protocol below) whose ``parse(options, where)`` reads the type's
raw options once, when the thing is built, and raises ``ConfigError`` naming ``where``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from schemas.errors import ConfigError

T = TypeVar("T")
S = TypeVar("S", covariant=True)


class Settings(Protocol[S]):
    """What a ``Settings`` class offers: its frozen values parsed from a type's raw options."""

    @classmethod
    def parse(cls, options: Mapping[str, Any], where: str) -> S: ...


class Registry(Mapping[str, str], Generic[T]):
    """``name → "module:attribute"``, read-only. ``unknown`` is the message for a name not
    registered, a format string given ``name`` and whatever ``lookup`` is called with."""

    def __init__(self, entries: Mapping[str, str], *, unknown: str) -> None:
        for name, where in entries.items():
            if where.count(":") != 1:
                raise ValueError(f"registry entry {name}: expected 'module:attribute', got {where}")
        self._entries = MappingProxyType(dict(entries))
        self._unknown = unknown

    def __getitem__(self, name: str) -> str:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, name: str, **context: Any) -> T:
        """The implementation registered as ``name``, imported now; ``ConfigError`` if none."""
        found: T = load(self, name, self._unknown.format(name=name, **context))
        return found


def load(entries: Mapping[str, str], name: str, unknown: str) -> Any:
    """What ``entries`` registers as ``name`` (``"module:attribute"``), imported now;
    ``ConfigError(unknown)`` when it registers nothing by that name."""
    where = entries.get(name)
    if where is None:
        raise ConfigError(unknown)
    module_name, attribute = where.split(":")
    return getattr(importlib.import_module(module_name), attribute)
