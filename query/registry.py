"""The one registry mechanism of the query room: a backend ``type`` names the class that
serves it, as ``"module:Class"``, imported only when a config uses the type (so a deployment
without, say, SageMaker never imports its client code)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from schemas.errors import ConfigError


class Registry(Mapping[str, str | None]):
    """``type`` → ``"module:Class"``, or None for a type that needs no backend object.
    Read-only; ``what`` names the kind of backend in errors (``unknown {what} type 'x'``)."""

    def __init__(self, what: str, classes: Mapping[str, str | None]) -> None:
        self.what = what
        self._classes: Mapping[str, str | None] = MappingProxyType(dict(classes))

    def __getitem__(self, kind: str) -> str | None:
        return self._classes[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def load(self, kind: str, suffix: str = "") -> type | None:
        """The class serving ``kind`` (None when it needs none); an unknown type is a
        ``ConfigError`` (``suffix`` is added to its message, e.g. the variation's name)."""
        if kind not in self._classes:
            raise ConfigError(f"unknown {self.what} type '{kind}'{suffix}")
        where = self._classes[kind]
        if where is None:
            return None
        module_name, class_name = where.split(":")
        cls: type = getattr(importlib.import_module(module_name), class_name)
        return cls
