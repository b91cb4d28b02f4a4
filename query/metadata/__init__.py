"""Item metadata stores for decoration, one module each; registered here by ``type``.

Every store class takes ``(settings: Mapping, context: MetadataContext)`` where ``settings`` is
an effective ``inferenceItemMetadata`` object, parses it once into its frozen settings
(``query.settings``), and implements ``query.base.ItemMetadata``. The
``personalize`` type has no store: Personalize returns the metadata with the items itself (the
resolver asks for ``metadataColumns``), so decoration leaves those items as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from query.base import ItemMetadata
from query.registry import Registry
from schemas.config import Config


@dataclass(frozen=True)
class MetadataContext:
    config: Config


REGISTRY = Registry(
    "inferenceItemMetadata",
    {
        "localdb": "query.metadata.localdb:LocalDbMetadata",
        "dynamodb": "query.metadata.dynamodb:DynamoDbMetadata",
        "personalize": None,
    },
)


def build_metadata(settings: Mapping[str, Any], context: MetadataContext) -> ItemMetadata | None:
    cls = REGISTRY.load(str(settings.get("type")))
    if cls is None:
        return None
    store: ItemMetadata = cls(settings, context)
    return store
