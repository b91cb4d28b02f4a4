"""Deterministic experiment assignment, shared by the query path and experiment tracking.

A user's variation for a feature is a pure function of (feature, user id, weights): the SHA-256
of ``"<feature>\\x1f<user id>"`` read as a number in [0, 1), mapped onto the variations'
cumulative weights in the order the config lists them. The same user always gets the same
variation while the weights stay the same, in every process, with no state to share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

SEPARATOR = "\x1f"


def bucket(feature: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by the feature and the user."""
    digest = hashlib.sha256(f"{feature}{SEPARATOR}{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(feature: str, user_id: str, weights: Mapping[str, float]) -> str:
    """The variation of ``weights`` (in its order) that ``user_id`` falls into."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError(f"experiment '{feature}' has no variation with a positive weight")
    point = bucket(feature, user_id) * total
    chosen = None
    for name, weight in weights.items():
        if weight <= 0:
            continue
        chosen = name
        if point < weight:
            return name
        point -= weight
    return chosen  # type: ignore[return-value]  # rounding at the very top end
