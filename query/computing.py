"""A cache entry computed for a query: resolved (``query.resolving``), decorated with item
metadata, post-processed, truncated to ``numResults``, ``matchedExperiment`` added, rendered.

A metadata store that fails leaves the items undecorated (counted), never fails the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import msgspec

from query.backends import Backends
from query.base import Query, Recommendations
from query.caching import Entry, Policy, make_etag
from query.observer import Observer
from query.postprocess import look_ahead
from query.resolving import Resolving, bounded
from query.variations import Choice
from schemas.config import Namespace, Recommender
from schemas.errors import P13nError

log = logging.getLogger("p13n.query")

POST_PROCESSOR_SECONDS = 5.0
_encode = msgspec.json.Encoder().encode


class Computing:
    def __init__(
        self, resolving: Resolving, observer: Observer, clock: Callable[[], float]
    ) -> None:
        self._resolving = resolving
        self._observer = observer
        self._clock = clock

    async def entry(
        self,
        backends: Backends,
        ns: Namespace,
        rec: Recommender,
        choice: Choice,
        query: Query,
        policy: Policy,
        url: str,
    ) -> Entry:
        """The entry answering ``query``; ``url`` (the plan's URL tag) binds its ETag."""
        wanted = query.num_results
        asked = look_ahead(rec.response_post_processor, wanted)
        asking = query if asked == wanted else replace(query, num_results=asked)
        answer, served, fell_back = await self._resolving.resolve(
            backends, ns, rec, choice.variation, asking
        )
        if query.decorate and served.inference_item_metadata:
            answer = await self._decorate(backends, served.inference_item_metadata, query, answer)
        post = backends.post_processor(ns, rec)
        if post is not None:
            answer = await bounded(
                post.apply(query, served, wanted, answer),
                POST_PROCESSOR_SECONDS,
                "response post-processor",
                "Function",
            )
        document = answer.body(query.shape)
        document[query.shape] = document[query.shape][:wanted]
        matched = choice.matched()
        if matched is not None:
            document["matchedExperiment"] = matched
        body = _encode(document)
        now = self._clock()
        expires = int(now) + policy.max_age if policy.max_age is not None else None
        mono = time.monotonic()
        return Entry(
            body=body,
            etag=make_etag(body, expires, url) if expires is not None else None,
            variation=served.name,
            fallback=fell_back,
            created=mono,
            fresh_until=mono + (policy.max_age or 0),
            recommendation_id=answer.recommendation_id,
        )

    async def _decorate(
        self,
        backends: Backends,
        settings: Mapping[str, Any],
        query: Query,
        answer: Recommendations,
    ) -> Recommendations:
        store = backends.metadata_store(settings)
        if store is None or not answer.items:
            return answer  # Personalize returned its own metadata with the items
        ids = list(dict.fromkeys(str(item["itemId"]) for item in answer.items))
        try:
            found = await store.lookup(query.namespace, ids)
        except P13nError as exc:
            self._observer.decoration_failed()
            log.warning("item metadata lookup failed; serving undecorated items: %s", exc.message)
            return answer
        items = tuple(
            {**item, "metadata": found[item["itemId"]]}
            if item["itemId"] in found and "metadata" not in item
            else item
            for item in answer.items
        )
        return Recommendations(items, answer.recommendation_id, answer.extra)
