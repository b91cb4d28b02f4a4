"""The query room's interfaces: what a request asks for, what a backend answers, who decorates.

A ``Query`` is built once per request from the path and query string (``query.params``) after
validation and auto-context, so every resolver sees clean values. A ``Resolver`` serves one
variation: it turns a ``Query`` into a ``Recommendations`` or raises a ``schemas.errors``
error (``Throttled`` → 429, ``UpstreamTimeout`` → 504, any other failure → ``UpstreamError``
502, never a bare exception). An ``ItemMetadata`` store adds ``metadata`` to items.

Concurrency: resolvers and metadata stores are called from the event loop and may be called
concurrently; they are built once per config (at start-up and on reload) and hold their clients.
Blocking work (boto3, SQLite) runs in a worker thread inside the implementation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

EMPTY: Mapping[str, str] = MappingProxyType({})

ITEM_LIST = "itemList"
RANKING = "personalizedRanking"
# The response shape of each action, as Personalize (and the sample project) answers it.
SHAPES: Mapping[str, str] = MappingProxyType(
    {"recommend-items": ITEM_LIST, "related-items": ITEM_LIST, "rerank-items": RANKING}
)
MAX_RESULTS = 500
DEFAULT_RESULTS = 25


@dataclass(frozen=True)
class Query:
    """One recommendation request, validated.

    ``num_results`` is what the resolver should ask its backend for: the caller's
    ``numResults`` enlarged by a post-processor's look-ahead, never above ``MAX_RESULTS``.
    ``context`` already holds the auto-context fields the caller did not set;
    ``filter_values`` the caller's own dynamic filter values (a resolver adds the
    ``autoDynamicFilterValues`` of the filter it applies). ``headers`` are the request's
    headers, lower-cased, for rules that read them; never forwarded as they are.
    """

    action: str
    namespace: str
    recommender: str
    user_id: str | None = None
    item_id: str | None = None
    item_ids: tuple[str, ...] = ()
    num_results: int = DEFAULT_RESULTS
    filter: str | None = None
    filter_values: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    context: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    synthetic_user: bool = False
    feature: str | None = None
    decorate: bool = True
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    @property
    def shape(self) -> str:
        return SHAPES[self.action]

    def with_context(self, context: Mapping[str, str]) -> Query:
        """This query with another ``context``: a shallow copy, as ``dataclasses.replace`` would
        make, without re-running ``__init__`` over every field (it is on every request)."""
        clone = copy.copy(self)
        object.__setattr__(clone, "context", context)
        return clone


@dataclass(frozen=True)
class Recommendations:
    """A backend's answer: items best first, each a dict with at least ``itemId`` (and
    optionally ``score``, ``promotionName``, ``reason``, ``metadata``), plus the backend's
    ``recommendationId`` when it gives one. ``extra`` keeps any other top-level keys the
    backend returned, passed through to the client unchanged."""

    items: tuple[Mapping[str, Any], ...]
    recommendation_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def body(self, shape: str) -> dict[str, Any]:
        document: dict[str, Any] = dict(self.extra)
        document[shape] = [dict(item) for item in self.items]
        if self.recommendation_id is not None:
            document["recommendationId"] = self.recommendation_id
        return document


class Resolver(Protocol):
    """Serves one variation of one recommender.

    ``resolve`` returns at most ``query.num_results`` items in the backend's order, or raises a
    ``P13nError``. It enforces its own timeout (the variation's ``timeout_ms``) where its
    transport allows, and the service bounds the call again. It does not retry beyond what its
    client does by itself; the service owns fallback and the circuit breaker.
    """

    name: str

    async def resolve(self, query: Query) -> Recommendations: ...

    async def close(self) -> None: ...


class ItemMetadata(Protocol):
    """Looks up item attributes for decoration.

    ``lookup`` returns a mapping for the ids it knows (unknown ids are simply absent) and raises
    a ``P13nError`` when the store cannot be read; the service then serves the items
    undecorated rather than failing the request.
    """

    async def lookup(self, namespace: str, item_ids: Sequence[str]) -> Mapping[str, Any]: ...

    async def close(self) -> None: ...
