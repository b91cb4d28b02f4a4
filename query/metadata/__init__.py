"""Item metadata stores for decoration, one module each; registered here by ``type``.

Every store class takes ``(settings: Mapping, context: MetadataContext)`` where ``settings`` is
an effective ``inferenceItemMetadata`` object, and implements ``query.base.ItemMetadata``. The
``personalize`` type has no store: Personalize returns the metadata with the items itself (the
resolver asks for ``metadataColumns``), so decoration leaves those items as they are.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from query.base import ItemMetadata
from schemas.config import Config
from schemas.errors import ConfigError


@dataclass(frozen=True)
class MetadataContext:
    config: Config


REGISTRY: Mapping[str, str | None] = MappingProxyType(
    {
        "localdb": "query.metadata.localdb:LocalDbMetadata",
        "dynamodb": "query.metadata.dynamodb:DynamoDbMetadata",
        "personalize": None,
    }
)


def build_metadata(settings: Mapping[str, Any], context: MetadataContext) -> ItemMetadata | None:
    kind = str(settings.get("type"))
    if kind not in REGISTRY:
        raise ConfigError(f"unknown inferenceItemMetadata type '{kind}'")
    where = REGISTRY[kind]
    if where is None:
        return None
    module_name, class_name = where.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    store: ItemMetadata = cls(settings, context)
    return store
