"""Variation resolvers, one module each; this is the one place their types are registered.

Every resolver class takes ``(variation: Variation, context: ResolverContext)`` and implements
``query.base.Resolver``. Adding a variation type is one module plus one line in ``REGISTRY``.
Resolvers are built when a config is loaded (never at import time) and closed when it is
replaced.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from query.base import Resolver
from schemas.config import Config, Namespace, Recommender, Variation
from schemas.errors import ConfigError


@dataclass(frozen=True)
class ResolverContext:
    """Where a variation sits, and what it may need beyond its own settings."""

    config: Config
    namespace: Namespace
    recommender: Recommender


# type → "module:Class", imported only when a config uses the type. ("function" is loaded as
# "lambda" by the config model.)
REGISTRY: Mapping[str, str] = MappingProxyType(
    {
        "personalize-campaign": "query.resolvers.personalize:PersonalizeResolver",
        "personalize-recommender": "query.resolvers.personalize:PersonalizeResolver",
        "sagemaker": "query.resolvers.sagemaker:SageMakerResolver",
        "lambda": "query.resolvers.lambda_function:LambdaResolver",
        "http": "query.resolvers.http:HttpResolver",
        "local": "query.resolvers.local:LocalResolver",
    }
)


# type → the ``type`` of the error body when that backend fails (the sample project's words).
ERROR_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "personalize-campaign": "Personalize",
        "personalize-recommender": "Personalize",
        "sagemaker": "SageMaker",
        "lambda": "Function",
        "http": "Http",
        "local": "Recommender",
    }
)


def build_resolver(variation: Variation, context: ResolverContext) -> Resolver:
    where = REGISTRY.get(variation.type)
    if where is None:
        raise ConfigError(f"unknown variation type '{variation.type}' ({variation.name})")
    module_name, class_name = where.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    resolver: Resolver = cls(variation, context)
    return resolver
