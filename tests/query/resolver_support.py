"""Building one variation's resolver from a small config document, and calling it once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from query.base import Query, Recommendations, Resolver
from query.resolvers import ResolverContext, build_resolver
from schemas.config import load_config
from schemas.errors import P13nError

NAMESPACE = "shop"
RECOMMENDER = "picks"
VARIATION = "v1"


def make_resolver(action: str, variation: Mapping[str, Any], **recommender: Any) -> Resolver:
    """The resolver of ``variation``, the only variation of recommender ``picks`` serving
    ``action`` in namespace ``shop``, loaded through the config model like any config."""
    document = {
        "namespaces": {
            NAMESPACE: {
                "recommenders": {
                    action: {
                        RECOMMENDER: {"variations": {VARIATION: dict(variation)}, **recommender}
                    }
                }
            }
        }
    }
    config = load_config(document)
    namespace = config.namespace(NAMESPACE)
    rec = namespace.recommenders[action][RECOMMENDER]
    return build_resolver(rec.variations[VARIATION], ResolverContext(config, namespace, rec))


def query(action: str, **fields: Any) -> Query:
    return Query(action=action, namespace=NAMESPACE, recommender=RECOMMENDER, **fields)


def resolve(resolver: Resolver, *queries: Query) -> list[Recommendations]:
    """Resolve each query in turn on one event loop, then close the resolver."""

    async def run() -> list[Recommendations]:
        try:
            return [await resolver.resolve(q) for q in queries]
        finally:
            await resolver.close()

    return asyncio.run(run())


def failure(resolver: Resolver, one: Query) -> P13nError:
    """The error resolving ``one`` raises (the test fails if it succeeds or raises another)."""

    async def run() -> P13nError:
        try:
            await resolver.resolve(one)
        except P13nError as error:
            return error
        finally:
            await resolver.close()
        raise AssertionError("the query was answered")

    return asyncio.run(run())
