"""``local``: the embedded recommender over the ``interactions`` target's store.

Algorithms (``algorithm`` in the variation; by default the action's natural one):

- recommend-items: ``popularity`` (default) — time-decayed popular items the user has not
  interacted with; ``affinity`` — unseen popular items weighted by the user's share of
  interactions in each item's ``category`` (from the item metadata in ``<dataDir>/items.db``),
  so a user who clicks toys and books is shown toys and books; without categories, the unseen
  popular items reordered by co-occurrence with the user's recent items.
- related-items: ``co-occurrence`` (default) — items seen in the same sessions, then popular;
  ``popularity`` — popular items other than the given one.
- rerank-items: ``affinity`` (default) — affinity to the user's recent items plus popularity;
  ``popularity`` — by decayed popularity alone.

Every answer carries a fresh ``recommendationId``. Reads run in a worker thread; a missing
store means no interactions yet (empty lists), never an error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread

from query.base import Query, Recommendations
from query.local import LocalRecommender
from query.metadata.localdb import default_path, read_items
from query.resolvers import ResolverContext
from query.settings import option, read_settings
from schemas.config import Variation
from schemas.errors import Unavailable

CATEGORY = "category"
DEFAULTS = {
    "recommend-items": "popularity",
    "related-items": "co-occurrence",
    "rerank-items": "affinity",
}
STORE = "interactions.db"


@dataclass(frozen=True)
class LocalSettings:
    """A ``local`` variation's own settings."""

    algorithm: str | None = option("algorithm", None)  # None: the action's (``DEFAULTS``)
    half_life_days: float = option("halfLifeDays", 7.0)


class LocalResolver:
    def __init__(self, variation: Variation, context: ResolverContext) -> None:

        self.name = variation.name
        self._action = context.recommender.action
        settings = read_settings(LocalSettings, variation.options, f"variation '{variation.name}'")
        self._algorithm = settings.algorithm or DEFAULTS[self._action]
        half_life = settings.half_life_days
        self._items = default_path(context.config.data_dir)
        self._recommender = LocalRecommender(
            os.path.join(context.config.data_dir, STORE), half_life_days=half_life
        )

    async def resolve(self, query: Query) -> Recommendations:
        scored = await anyio.to_thread.run_sync(self._scored, query)
        items = tuple({"itemId": item, "score": score} for item, score in scored)
        return Recommendations(items, recommendation_id=f"local-{uuid.uuid4()}")

    def _scored(self, query: Query) -> list[tuple[str, float]]:
        local, ns, n = self._recommender, query.namespace, query.num_results
        if query.action == "related-items":
            assert query.item_id is not None
            if self._algorithm == "popularity":
                return local.recommend(ns, None, n, exclude=[query.item_id])
            return local.related(ns, query.item_id, n, query.user_id)
        if query.action == "rerank-items":
            if self._algorithm == "popularity":
                popular = dict(local.recommend(ns, None, len(query.item_ids) * 4 + 100))
                ranked = sorted(
                    enumerate(query.item_ids),
                    key=lambda pair: (-popular.get(pair[1], 0.0), pair[0]),
                )
                return [(item, popular.get(item, 0.0)) for _, item in ranked][:n]
            return local.rerank(ns, query.user_id, query.item_ids)[:n]
        if self._algorithm == "affinity":
            return local.affinity(ns, query.user_id, n, lambda ids: self._categories(ns, ids))
        return local.recommend(ns, query.user_id, n)

    def _categories(self, namespace: str, item_ids: Sequence[str]) -> dict[str, str]:
        """Each known item's ``category`` from the data dir's item metadata (``items.db``)."""
        try:
            found = read_items(self._items, namespace, item_ids)
        except Unavailable:  # unreadable metadata: rank without categories rather than fail
            return {}
        return {
            item: str(meta[CATEGORY])
            for item, meta in found.items()
            if isinstance(meta, dict) and meta.get(CATEGORY) is not None
        }

    async def close(self) -> None:
        return None
