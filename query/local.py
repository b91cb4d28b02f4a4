"""The embedded recommender: recommendations computed from ``<dataDir>/interactions.db``.

Contract: ``schemas.interactions`` (the table the ``interactions`` consumer target writes, its
columns and indexes). This module only reads those columns, by name, over a read-only
connection opened per call (WAL lets it read while the consumer writes). A missing file or a
missing table reads as "no interactions yet": empty results, never an error.

Every interaction weighs ``0.5 ** (age / half_life)`` with ``age = max(now - ts_ms, 0)``; rows
without an ``item_id`` are ignored. All aggregation runs in SQL.

- ``recommend``: popularity ``pop(i) = Σ weight`` over the namespace, minus the items the user
  has interacted with and ``exclude``. Only unseen items; fewer than ``n`` if that is all there is.
- ``related``: ``co(i) = Σ_sessions containing the item and i  weight(latest i in that session)``,
  over the item's ``MAX_SESSIONS`` (1000) most recent sessions, best first; then filled with
  popular items (never the item itself) carrying their ``pop`` score, so the second tier's
  scores are on a different scale from the first's.
- ``rerank``: ``score(c) = affinity(c) + 0.1 * pop(c) / max(pop over the candidates)``, where
  ``affinity(c) = Σ_{r in recent} co(r, c)`` over the user's 20 most recently touched distinct
  items ``r != c``, each over its ``MAX_SESSIONS / RECENT_ITEMS`` (50) most recent sessions.
  Unknown items score 0 and are kept; duplicates are kept.

- ``affinity``: the user's own categories first. With ``categories`` (item id → category, e.g.
  the ``category`` of each item's metadata), ``share(c)`` is the user's decayed weight on
  category ``c`` over their total, and ``score(i) = share(category(i)) * pop(i)`` over the unseen
  popular items (``AFFINITY_POOL`` of them): items of categories the user never touched score 0
  and come last, by popularity. A user with no categorised history gets ``rerank`` order
  (affinity by shared sessions) over the same pool instead.

Determinism: same data and clock, same answer. Scores are rounded to 9 decimals before ordering;
ties go by item id (``recommend``, ``related``) or by input position (``rerank``).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from schemas.interactions import TABLE

RECENT_ITEMS = 20
AFFINITY_POOL = 1000
MAX_SESSIONS = 1000
POPULARITY_SHARE = 0.1
_DIGITS = 9
_DAY_MS = 86_400_000.0

# :k is -ln(2) / half_life_ms, :now is the clock in ms: exp(:k * age) == 0.5 ** (age / half_life).
_WEIGHT = "exp(:k * max(:now - {ts}, 0))"

_POPULAR = f"""
SELECT item_id, round(SUM({_WEIGHT.format(ts="ts_ms")}), {_DIGITS}) AS score
FROM {TABLE}
WHERE namespace = :ns AND item_id IS NOT NULL
GROUP BY item_id
ORDER BY score DESC, item_id
LIMIT :limit
"""

# The inner ``LIMIT -1`` keeps each subquery unflattened, so the planner reads it through the
# index on its own WHERE columns instead of scanning the namespace in the GROUP BY's order.
_SEEN = f"""
SELECT DISTINCT item_id, 0 FROM (
  SELECT item_id FROM {TABLE} WHERE namespace = :ns AND user_id = :user LIMIT -1)
WHERE item_id IS NOT NULL
"""

_RECENT = f"""
SELECT item_id, MAX(ts) AS ts FROM (
  SELECT item_id, ts_ms AS ts FROM {TABLE}
  WHERE namespace = :ns AND user_id = :user LIMIT -1)
WHERE item_id IS NOT NULL
GROUP BY item_id
ORDER BY ts DESC, item_id
LIMIT {RECENT_ITEMS}
"""

_RELATED = f"""
WITH pairs AS (
  SELECT item_id, session_id, MAX(ts_ms) AS ts FROM (
    SELECT item_id, session_id, ts_ms FROM {TABLE}
    WHERE namespace = :ns AND session_id IN (
      SELECT session_id FROM {TABLE} WHERE namespace = :ns AND item_id = :item
      ORDER BY ts_ms DESC LIMIT {MAX_SESSIONS})
    LIMIT -1)
  WHERE item_id IS NOT NULL AND item_id != :item
  GROUP BY item_id, session_id
)
SELECT item_id, round(SUM({_WEIGHT.format(ts="ts")}), {_DIGITS}) AS score
FROM pairs
GROUP BY item_id
ORDER BY score DESC, item_id
LIMIT :limit
"""

_AFFINITY = f"""
WITH recent_sessions AS (
  SELECT DISTINCT recent_item, session_id FROM (
    SELECT item_id AS recent_item, session_id,
      row_number() OVER (PARTITION BY item_id ORDER BY ts_ms DESC) AS nth
    FROM {TABLE}
    WHERE namespace = :ns AND item_id IN (SELECT value FROM json_each(:recent)))
  WHERE nth <= {MAX_SESSIONS // RECENT_ITEMS}
), pairs AS (
  SELECT rs.recent_item, i.item_id, i.session_id, MAX(i.ts_ms) AS ts
  FROM recent_sessions rs
  JOIN {TABLE} i ON i.namespace = :ns AND i.session_id = rs.session_id
  WHERE i.item_id IN (SELECT value FROM json_each(:candidates)) AND i.item_id != rs.recent_item
  GROUP BY rs.recent_item, i.item_id, i.session_id
)
SELECT item_id, SUM({_WEIGHT.format(ts="ts")}) FROM pairs GROUP BY item_id
"""

_USER_ITEMS = f"""
SELECT item_id, SUM({_WEIGHT.format(ts="ts")}) FROM (
  SELECT item_id, ts_ms AS ts FROM {TABLE}
  WHERE namespace = :ns AND user_id = :user LIMIT -1)
WHERE item_id IS NOT NULL
GROUP BY item_id
"""

_CANDIDATE_POPULARITY = f"""
SELECT item_id, SUM({_WEIGHT.format(ts="ts_ms")})
FROM {TABLE}
WHERE namespace = :ns AND item_id IN (SELECT value FROM json_each(:candidates))
GROUP BY item_id
"""


class LocalRecommender:
    """Reads the interactions table; holds no connection between calls."""

    def __init__(
        self,
        path: str,
        *,
        half_life_days: float = 7.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not half_life_days > 0:
            raise ValueError(f"half_life_days must be positive, got {half_life_days!r}")
        self.path = path
        self.half_life_days = half_life_days
        self._k = -math.log(2) / (half_life_days * _DAY_MS)
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalRecommender({self.path!r}, half_life_days={self.half_life_days!r})"

    def recommend(
        self, namespace: str, user_id: str | None, n: int, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """The ``n`` most popular items the user has not interacted with, best first."""
        excluded = set(exclude)
        if n <= 0:
            return []
        if user_id is not None:
            excluded.update(item for item, _ in self._query(_SEEN, ns=namespace, user=user_id))
        rows = self._query(_POPULAR, ns=namespace, limit=n + len(excluded))
        return [(item, score) for item, score in rows if item not in excluded][:n]

    def affinity(
        self,
        namespace: str,
        user_id: str | None,
        n: int,
        categories: Callable[[Sequence[str]], Mapping[str, str]],
    ) -> list[tuple[str, float]]:
        """Unseen items of the user's own categories first (see the module docstring);
        ``categories(ids)`` gives the category of the ids it knows."""
        if n <= 0:
            return []
        pool = self.recommend(namespace, user_id, max(n, AFFINITY_POOL))
        history = self._query(_USER_ITEMS, ns=namespace, user=user_id) if user_id else []
        known = categories([item for item, _ in history] + [item for item, _ in pool])
        weights: dict[str, float] = {}
        for item, weight in history:
            category = known.get(item)
            if category is not None:
                weights[category] = weights.get(category, 0.0) + weight
        total = sum(weights.values())
        if total <= 0:
            return self.rerank(namespace, user_id, [item for item, _ in pool])[:n]
        scored = [
            (item, round(weights.get(known.get(item, ""), 0.0) / total * pop, _DIGITS), pop)
            for item, pop in pool
        ]
        scored.sort(key=lambda entry: (-entry[1], -entry[2], entry[0]))
        return [(item, score) for item, score, _ in scored[:n]]

    def related(
        self, namespace: str, item_id: str, n: int, user_id: str | None = None
    ) -> list[tuple[str, float]]:
        """Items sharing sessions with ``item_id``, then popular items; never ``item_id``.

        ``user_id`` is accepted for the resolver interface; seen items are not removed.
        """
        if n <= 0:
            return []
        related = self._query(_RELATED, ns=namespace, item=item_id, limit=n)
        if len(related) < n:
            taken = {item for item, _ in related} | {item_id}
            popular = self._query(_POPULAR, ns=namespace, limit=n + len(taken))
            related += [(item, score) for item, score in popular if item not in taken]
        return related[:n]

    def rerank(
        self, namespace: str, user_id: str | None, item_ids: Sequence[str]
    ) -> list[tuple[str, float]]:
        """Every given item (duplicates too), by affinity to the user's recent items."""
        if not item_ids:
            return []
        candidates = json.dumps(sorted(set(item_ids)))
        recent = [item for item, _ in self._query(_RECENT, ns=namespace, user=user_id)]
        affinity = (
            dict(
                self._query(
                    _AFFINITY, ns=namespace, recent=json.dumps(recent), candidates=candidates
                )
            )
            if recent
            else {}
        )
        popularity = dict(self._query(_CANDIDATE_POPULARITY, ns=namespace, candidates=candidates))
        top = max(popularity.values(), default=0.0)
        scores = {
            item: round(
                affinity.get(item, 0.0)
                + (POPULARITY_SHARE * popularity.get(item, 0.0) / top if top > 0 else 0.0),
                _DIGITS,
            )
            for item in set(item_ids)
        }
        ranked = sorted(enumerate(item_ids), key=lambda pair: (-scores[pair[1]], pair[0]))
        return [(item, scores[item]) for _, item in ranked]

    def _query(self, sql: str, **params: object) -> list[tuple[str, float]]:
        if not os.path.exists(self.path):
            return []
        params["k"] = self._k
        params["now"] = self._clock() * 1000.0
        try:
            conn = sqlite3.connect(
                f"{Path(self.path).absolute().as_uri()}?mode=ro", uri=True, timeout=5.0
            )
        except sqlite3.OperationalError:
            return []
        try:
            _ensure_exp(conn)
            return [(str(item), float(score or 0.0)) for item, score in conn.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()


def _ensure_exp(conn: sqlite3.Connection) -> None:
    """SQLite builds without the math functions lack ``exp``: supply Python's."""
    try:
        conn.execute("SELECT exp(0)")
    except sqlite3.OperationalError:
        conn.create_function("exp", 1, math.exp, deterministic=True)
