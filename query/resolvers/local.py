"""``local``: the embedded recommender over the ``interactions`` target's store.

Algorithms (``algorithm`` in the variation; by default the action's natural one):

- recommend-items: ``popularity`` (default) — time-decayed popular items the user has not
  interacted with; ``affinity`` — the same unseen popular candidates (``CANDIDATES`` times the
  request, at least 100) reordered by affinity to the user's recent items, so two users see
  different lists as soon as their histories differ.
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

import anyio.to_thread

from query.base import Query, Recommendations
from query.local import LocalRecommender
from query.resolvers import ResolverContext
from schemas.config import Variation

CANDIDATES = 4
MIN_CANDIDATES = 100
DEFAULTS = {
    "recommend-items": "popularity",
    "related-items": "co-occurrence",
    "rerank-items": "affinity",
}
STORE = "interactions.db"


class LocalResolver:
    def __init__(self, variation: Variation, context: ResolverContext) -> None:

        self.name = variation.name
        self._action = context.recommender.action
        self._algorithm = str(variation.options.get("algorithm") or DEFAULTS[self._action])
        half_life = float(variation.options.get("halfLifeDays", 7.0))
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
            pool = [
                item
                for item, _ in local.recommend(
                    ns, query.user_id, max(n * CANDIDATES, MIN_CANDIDATES)
                )
            ]
            return local.rerank(ns, query.user_id, pool)[:n]
        return local.recommend(ns, query.user_id, n)

    async def close(self) -> None:
        return None
