"""Item metadata stores for decoration, one module each; registered here by ``type``.

Every store class takes ``(settings: Mapping, context: MetadataContext)`` where ``settings`` is
an effective ``inferenceItemMetadata`` object, parses it once into its frozen settings
(``query.settings``), and implements ``query.base.ItemMetadata``. The
``personalize`` type has no store: Personalize returns the metadata with the items itself (the
resolver asks for ``metadataColumns``), so decoration leaves those items as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from query.base import ItemMetadata
from schemas.config import Config
from schemas.registry import Registry


@dataclass(frozen=True)
class MetadataContext:
    config: Config


def from_personalize(settings: Mapping[str, Any], context: MetadataContext) -> None:
    """``type: personalize``: Personalize returns the items' metadata with its answer (its
    ``metadataColumns``), so there is no store to read."""
    return None


# type → what builds its store from (settings, context), imported only when a config uses it.
REGISTRY: Registry[Callable[[Mapping[str, Any], MetadataContext], ItemMetadata | None]] = Registry(
    {
        "localdb": "query.metadata.localdb:LocalDbMetadata",
        "dynamodb": "query.metadata.dynamodb:DynamoDbMetadata",
        "personalize": "query.metadata:from_personalize",
    },
    unknown="unknown inferenceItemMetadata type '{name}'",
)


def build_metadata(settings: Mapping[str, Any], context: MetadataContext) -> ItemMetadata | None:
    return REGISTRY.lookup(str(settings.get("type")))(settings, context)
