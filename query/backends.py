"""Everything the query path builds for one config: resolvers, metadata stores and response
post-processors (each built on first use, then kept), and the memo of request plans. All of it
is closed together when a reload replaces the config (``query.service`` keeps the grace)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from query.base import ItemMetadata, Resolver
from query.metadata import MetadataContext, build_metadata
from query.planning import Plan, PlanKey
from query.postprocess import PostProcessor
from query.resolvers import ResolverContext, build_resolver
from schemas.config import Config, Namespace, Recommender, Variation

log = logging.getLogger("p13n.query")


class Backends:
    """What is built for ``config``; ``close`` closes every resolver and store built."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.resolvers: dict[tuple[str, str, str, str], Resolver] = {}
        self.metadata: dict[str, ItemMetadata | None] = {}
        self.metadata_by_object: dict[int, tuple[Mapping[str, Any], ItemMetadata | None]] = {}
        self.post_processors: dict[tuple[str, str, str], PostProcessor] = {}
        self.plans: dict[PlanKey, Plan] = {}

    def resolver(self, ns: Namespace, rec: Recommender, variation: Variation) -> Resolver:
        key = (ns.key, rec.action, rec.name, variation.name)
        found = self.resolvers.get(key)
        if found is None:
            found = build_resolver(variation, ResolverContext(self.config, ns, rec))
            self.resolvers[key] = found
        return found

    def metadata_store(self, settings: Mapping[str, Any]) -> ItemMetadata | None:
        # By the settings object first (the config's own, alive as long as this): the JSON
        # key below costs more than the rest of a lookup.
        known = self.metadata_by_object.get(id(settings))
        if known is not None and known[0] is settings:
            return known[1]
        key = json.dumps(_plain(settings), sort_keys=True)
        if key not in self.metadata:
            self.metadata[key] = build_metadata(settings, MetadataContext(self.config))
        self.metadata_by_object[id(settings)] = (settings, self.metadata[key])
        return self.metadata[key]

    def post_processor(self, ns: Namespace, rec: Recommender) -> PostProcessor | None:
        if rec.response_post_processor is None:
            return None
        key = (ns.key, rec.action, rec.name)
        found = self.post_processors.get(key)
        if found is None:
            found = PostProcessor(rec.response_post_processor, rec)
            self.post_processors[key] = found
        return found

    async def close(self) -> None:
        closers = [r.close() for r in self.resolvers.values()]
        closers += [m.close() for m in self.metadata.values() if m is not None]
        for result in await asyncio.gather(*closers, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("closing a query backend failed: %s", result)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
