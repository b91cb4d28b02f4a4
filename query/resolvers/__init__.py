"""Variation resolvers, one module each; this is the one place their types are registered.

Every resolver class takes ``(variation: Variation, context: ResolverContext)`` and implements
``query.base.Resolver``; it parses ``variation.options`` once into a frozen settings object of
its own (``query.settings``). Adding a variation type is one module plus one line in
``REGISTRY`` (a ``schemas.registry.Registry``).
Resolvers are built when a config is loaded (never at import time) and closed when it is
replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from query.base import Resolver
from schemas.config import Config, Namespace, Recommender, Variation
from schemas.registry import Registry


@dataclass(frozen=True)
class ResolverContext:
    """Where a variation sits, and what it may need beyond its own settings."""

    config: Config
    namespace: Namespace
    recommender: Recommender


# type → "module:Class", imported only when a config uses the type. ("function" is loaded as
# "lambda" by the config model.)
REGISTRY: Registry[type[Resolver]] = Registry(
    {
        "personalize-campaign": "query.resolvers.personalize:PersonalizeResolver",
        "personalize-recommender": "query.resolvers.personalize:PersonalizeResolver",
        "sagemaker": "query.resolvers.sagemaker:SageMakerResolver",
        "lambda": "query.resolvers.lambda_function:LambdaResolver",
        "http": "query.resolvers.http:HttpResolver",
        "local": "query.resolvers.local:LocalResolver",
    },
    unknown="unknown variation type '{name}' ({variation})",
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
    cls = REGISTRY.lookup(variation.type, variation=variation.name)
    resolver: Resolver = cls(variation, context)  # type: ignore[call-arg]
    return resolver
