"""The query path: one recommendation request from validated parameters to a rendered answer.

Order of work for a request:

1. Namespace and recommender from the running config (unknown → 404
   ``RecommenderNotConfigured``); parameters validated (``query.params``).
2. Variation chosen (``query.variations``: experiment assignment or the first one); the
   variation's auto-context fills ``context`` fields the caller did not set.
3. Caching policy (``query.caching``); an unexpired ETag in ``If-None-Match`` → 304 at once.
4. GET: a fresh entry of the in-process cache is served as it is; otherwise concurrent
   identical misses share one computation. POST (rerank with a body) is never cached.
5. Computation: the variation's resolver under its timeout and circuit breaker (which counts
   only the backend's own failures, ``query.breaker.is_backend_failure``); on failure or an
   open breaker, the variation's ``fallback`` (one hop). A request the resolver refuses
   (``PermanentError``, e.g. a malformed filter name) is answered with that error at once.
   Then decoration with item metadata (a metadata store that fails leaves items undecorated,
   counted), the response post-processor, truncation to ``numResults``, ``matchedExperiment``.
6. When every backend failed: a stale cache entry if there is one (``Warning: 110``), else the
   error (429 throttled, 502 upstream, 503 circuit open, 504 timeout).
7. An exposure record per answer an experiment chose (200 only), offered to the producer
   without waiting; when the queue is full it is dropped and counted, never silently.

Resolvers, metadata stores and post-processors are built on first use for the config in force
and closed (after a grace period for requests in flight) when a reload replaces it.

The parts, one module each: ``query.exchange`` (``Request``, ``Answer``, headers),
``query.planning`` (1-2: the plan), ``query.backends`` (what is built per config),
``query.resolving`` (5: breaker, timeout, fallback), ``query.computing`` (5: decoration,
post-processing, the entry), ``query.exposures`` (7). This module orders them (3, 4, 6) and
follows config reloads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType

from query.backends import Backends
from query.breaker import Breaker
from query.caching import Entry, ResponseCache, still_fresh
from query.computing import Computing
from query.exchange import Answer, Request, answer_headers, cache_headers
from query.exposures import Exposures, ExposureSink
from query.observer import Observer, Quiet
from query.planning import Plan, plan
from query.resolving import Resolving
from schemas.codec import Codec
from schemas.errors import P13nError, PermanentError
from schemas.sources import ConfigHolder

__all__ = ["Answer", "ExposureSink", "Observer", "QueryService", "Request"]

log = logging.getLogger("p13n.query")

CLOSE_GRACE_SECONDS = 10.0

_CacheKey = tuple[str, str, str, tuple[tuple[str, str], ...]]


class QueryService:
    def __init__(
        self,
        holder: ConfigHolder,
        *,
        exposures: ExposureSink | None = None,
        codec: Codec | None = None,
        observer: Observer | None = None,
        cache: ResponseCache | None = None,
        breaker: Callable[[], Breaker] = Breaker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._holder = holder
        self._observer: Observer = observer or Quiet()
        self._cache = cache or ResponseCache()
        self._clock = clock
        self._computing = Computing(Resolving(self._observer, breaker), self._observer, clock)
        self._exposures = Exposures(exposures, codec or Codec.packaged(), self._observer)
        self._built: Backends | None = None
        self._retiring: dict[asyncio.Task[None], Backends] = {}

    # -- the request ---------------------------------------------------------------------------

    async def serve(self, request: Request) -> Answer:
        built = self._current()
        made = plan(built.config, built.plans, request)
        policy = made.policy
        now = self._clock()
        rules = made.choice.variation.auto_context
        auto = (
            rules.for_context(request.headers, datetime.fromtimestamp(now, UTC))
            if rules.fields
            else None
        )
        if policy.cacheable and still_fresh(
            request.headers.get("if-none-match"), now, made.url_tag
        ):
            self._observer.cache("not-modified")
            return Answer(304, b"", cache_headers(policy, request.headers["if-none-match"]))
        # The auto-context values too: one URL asked from a phone and from a desktop may be
        # answered differently.
        key: _CacheKey = (
            request.url_path,
            made.params_key,
            made.choice.variation.name,
            tuple(sorted(auto.items())) if auto else (),
        )
        entry, outcome = await self._entry(built, made, request, auto, key)
        self._observer.cache(outcome)
        self._exposures.expose(made.query, made.rec, made.choice, entry, now)
        return Answer(200, entry.body, answer_headers(policy, entry, outcome), entry.encodings)

    async def _entry(
        self,
        built: Backends,
        made: Plan,
        request: Request,
        auto: Mapping[str, str] | None,
        key: _CacheKey,
    ) -> tuple[Entry, str]:
        """The entry answering ``request`` and its cache outcome: a fresh cache entry as it
        is; else one computation shared by concurrent identical misses (a POST alone, never
        cached); when that fails retryably, a stale entry if there is one."""

        async def compute() -> Entry:
            asked = made.query
            if asked.headers is not request.headers:  # a remembered plan: this request's own
                asked = replace(asked, headers=request.headers)
            if auto:
                asked = asked.with_context(MappingProxyType({**auto, **asked.context}))
            return await self._computing.entry(
                built, made.ns, made.rec, made.choice, asked, made.policy, made.url_tag
            )

        cacheable = made.policy.cacheable
        entry = self._cache.fresh(key) if cacheable else None
        try:
            if entry is not None:
                return entry, "hit"
            if request.body is not None:
                return await compute(), "miss"
            entry, waited = await self._cache.coalesce(key, compute)
            if cacheable and not waited:
                self._cache.store(key, entry)
            return entry, "coalesced" if waited else "miss"
        except P13nError as exc:
            stale = self._cache.stale(key) if cacheable else None
            if stale is None or isinstance(exc, PermanentError):
                raise
            log.warning("serving a stale response: %s", exc.message)
            return stale, "stale"

    # -- config lifecycle ----------------------------------------------------------------------

    def _current(self) -> Backends:
        config = self._holder.current
        built = self._built
        if built is None or built.config is not config:
            self._built = Backends(config)
            self._cache.clear()
            if built is not None:
                self._retire(built)
        return self._built  # type: ignore[return-value]

    def _retire(self, built: Backends) -> None:
        async def later() -> None:
            await asyncio.sleep(CLOSE_GRACE_SECONDS)  # requests in flight still hold them
            await built.close()

        task = asyncio.get_running_loop().create_task(later())
        self._retiring[task] = built
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        """Close every backend now, including those of replaced configs still in their grace."""
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for _, built in retiring:
            await built.close()
        if self._built is not None:
            await self._built.close()
            self._built = None
