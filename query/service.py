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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

import msgspec

from query import params as query_params
from query.base import ItemMetadata, Query, Recommendations, Resolver
from query.breaker import Breaker
from query.caching import Entry, Policy, ResponseCache, make_etag, still_fresh, url_tag
from query.metadata import MetadataContext, build_metadata
from query.postprocess import PostProcessor, look_ahead
from query.resolvers import ERROR_TYPES, ResolverContext, build_resolver
from query.variations import Choice, choose
from schemas.codec import EXPOSURE, Codec
from schemas.config import Config, Namespace, Recommender, Variation
from schemas.errors import (
    NotFound,
    P13nError,
    PermanentError,
    RetryableError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from schemas.records import new_record_id
from schemas.sources import ConfigHolder
from streams.base import Entry as StreamEntry

log = logging.getLogger("p13n.query")

CLOSE_GRACE_SECONDS = 10.0
TIMEOUT_SLACK_SECONDS = 0.05
STALE_WARNING = '110 - "Response is Stale"'
_encode = msgspec.json.Encoder().encode


class Observer(Protocol):
    """Where the query path reports what it did (the app turns these into metrics)."""

    def cache(self, outcome: str) -> None: ...  # hit, miss, coalesced, stale, not-modified

    def backend(self, variation_type: str, outcome: str, seconds: float) -> None: ...

    def fallback(self, reason: str) -> None: ...

    def decoration_failed(self) -> None: ...

    def exposure(self, outcome: str) -> None: ...  # written, dropped


class ExposureSink(Protocol):
    def offer(self, entry: StreamEntry) -> bool: ...


class _Quiet:
    def cache(self, outcome: str) -> None:
        pass

    def backend(self, variation_type: str, outcome: str, seconds: float) -> None:
        pass

    def fallback(self, reason: str) -> None:
        pass

    def decoration_failed(self) -> None:
        pass

    def exposure(self, outcome: str) -> None:
        pass


@dataclass(frozen=True)
class Request:
    """What the HTTP layer hands over: plain values, no framework objects."""

    action: str
    namespace: str
    recommender: str
    path: Mapping[str, str]
    params: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    url_path: str
    body: bytes | None = None
    # The raw query string, when the caller has it: repeated GETs then reuse their plan.
    query_string: bytes | None = None


@dataclass(frozen=True)
class _Plan:
    """What a GET's path and query string decide, whatever its headers: the recommender, the
    validated query (with the headers of the request it was made for), the variation chosen
    for its user and feature, the caching policy and the cache-key form of its parameters."""

    ns: Namespace
    rec: Recommender
    query: Query
    choice: Choice
    policy: Policy
    params_key: str
    url_tag: str  # what binds this URL's ETags to it


# Plans remembered per config (by action, path and query string); emptied when full.
PLAN_MEMO_SIZE = 4096


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The memo of the body's encodings when the body is a cache entry's (``Entry.encodings``).
    encodings: dict[object, bytes] | None = None


class _Built:
    """Everything built for one config; closed together when the config is replaced."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.resolvers: dict[tuple[str, str, str, str], Resolver] = {}
        self.metadata: dict[str, ItemMetadata | None] = {}
        self.metadata_by_object: dict[int, tuple[Mapping[str, Any], ItemMetadata | None]] = {}
        self.post_processors: dict[tuple[str, str, str], PostProcessor] = {}
        self.plans: dict[tuple[str, str, bytes], _Plan] = {}

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
        if not rec.response_post_processor:
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
        self._exposures = exposures
        self._codec = codec or Codec.packaged()
        self._observer: Observer = observer or _Quiet()
        self._cache = cache or ResponseCache()
        self._new_breaker = breaker
        self._breakers: dict[tuple[str, str, str, str], Breaker] = {}
        self._clock = clock
        self._built: _Built | None = None
        self._retiring: dict[asyncio.Task[None], _Built] = {}
        self._dropped_logged_at = 0.0

    # -- the request ---------------------------------------------------------------------------

    async def serve(self, request: Request) -> Answer:
        built = self._current()
        plan = self._plan(built, request)
        query, choice, policy = plan.query, plan.choice, plan.policy
        now = self._clock()
        rules = choice.variation.auto_context
        auto = (
            rules.for_context(request.headers, datetime.fromtimestamp(now, UTC))
            if rules.fields
            else None
        )
        if policy.cacheable and still_fresh(
            request.headers.get("if-none-match"), now, plan.url_tag
        ):
            self._observer.cache("not-modified")
            return Answer(304, b"", self._cache_headers(policy, request.headers["if-none-match"]))

        async def compute() -> Entry:
            asked = query
            if asked.headers is not request.headers:  # a remembered plan: this request's own
                asked = replace(asked, headers=request.headers)
            if auto:
                asked = asked.with_context(MappingProxyType({**auto, **asked.context}))
            return await self._compute(
                built, plan.ns, plan.rec, choice, asked, policy, plan.url_tag
            )

        # The auto-context values too: one URL asked from a phone and from a desktop may be
        # answered differently.
        key = (
            request.url_path,
            plan.params_key,
            choice.variation.name,
            tuple(sorted(auto.items())) if auto else (),
        )
        outcome = "miss"
        entry = self._cache.fresh(key) if policy.cacheable else None
        try:
            if entry is not None:
                outcome = "hit"
            elif request.body is not None:
                entry = await compute()
            else:
                entry, waited = await self._cache.coalesce(key, compute)
                outcome = "coalesced" if waited else "miss"
                if policy.cacheable and not waited:
                    self._cache.store(key, entry)
        except P13nError as exc:
            stale = self._cache.stale(key) if policy.cacheable else None
            if stale is None or isinstance(exc, PermanentError):
                raise
            log.warning("serving a stale response: %s", exc.message)
            entry, outcome = stale, "stale"
        self._observer.cache(outcome)
        self._expose(query, plan.rec, choice, entry, now)
        return Answer(200, entry.body, self._headers(policy, entry, outcome), entry.encodings)

    def _plan(self, built: _Built, request: Request) -> _Plan:
        """The request's plan: remembered for a cacheable GET with its query string, else made
        anew. Requests that fail validation raise here and leave nothing behind."""
        key = None
        if request.query_string is not None and request.body is None:
            key = (request.action, request.url_path, request.query_string)
            known = built.plans.get(key)
            if known is not None:
                return known
        ns, rec = self._recommender(built.config, request)
        query = query_params.parse(
            request.action,
            ns.key,
            rec.name,
            request.path,
            request.params,
            request.headers,
            request.body,
        )
        choice = choose(rec, query.user_id, query.feature)
        policy = Policy.for_query(
            choice.variation.cache_control, query, no_store=request.body is not None
        )
        params_key = query_params.normalised(request.params)
        plan = _Plan(
            ns, rec, query, choice, policy, params_key, url_tag(request.url_path, params_key)
        )
        # Only a cacheable answer is asked for again cheaply enough for the plan to matter; the
        # plans of uncached misses (a user each) would only pile up for the collector.
        if key is not None and policy.cacheable:
            if len(built.plans) >= PLAN_MEMO_SIZE:
                built.plans.clear()
            built.plans[key] = plan
        return plan

    def _recommender(self, config: Config, request: Request) -> tuple[Namespace, Recommender]:
        ns = config.namespaces.get(request.namespace)
        rec = ns.recommenders.get(request.action, {}).get(request.recommender) if ns else None
        if ns is None or rec is None:
            raise NotFound(
                f"No '{request.action}' recommender '{request.recommender}' is configured "
                f"in namespace '{request.namespace}'",
                code="RecommenderNotConfigured",
            )
        return ns, rec

    async def _compute(
        self,
        built: _Built,
        ns: Namespace,
        rec: Recommender,
        choice: Choice,
        query: Query,
        policy: Policy,
        url: str,
    ) -> Entry:
        wanted = query.num_results
        asked = look_ahead(rec.response_post_processor, wanted)
        asking = query if asked == wanted else replace(query, num_results=asked)
        answer, served, fell_back = await self._resolve(built, ns, rec, choice.variation, asking)
        if query.decorate and served.inference_item_metadata:
            answer = await self._decorate(built, served.inference_item_metadata, query, answer)
        post = built.post_processor(ns, rec)
        if post is not None:
            answer = await self._bounded(
                post.apply(query, served, wanted, answer),
                5.0,
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

    async def _resolve(
        self, built: _Built, ns: Namespace, rec: Recommender, chosen: Variation, query: Query
    ) -> tuple[Recommendations, Variation, bool]:
        candidates = [chosen]
        if chosen.fallback is not None:
            candidates.append(rec.variations[chosen.fallback])
        first_error: P13nError | None = None
        for variation in candidates:
            fell_back = variation is not chosen
            if fell_back:
                self._observer.fallback(
                    "open" if isinstance(first_error, Unavailable) else "failed"
                )
            breaker = self._breaker(ns, rec, variation)
            if not breaker.allow():
                first_error = first_error or Unavailable(
                    f"variation '{variation.name}' is failing; its circuit is open",
                    code="CircuitOpen",
                    retry_after=breaker.retry_after(),
                    type_=ERROR_TYPES.get(variation.type),
                )
                continue
            resolver = built.resolver(ns, rec, variation)
            started = time.perf_counter()
            try:
                answer = await self._bounded(
                    resolver.resolve(query),
                    variation.timeout_ms / 1000,
                    "recommender",
                    ERROR_TYPES.get(variation.type, "Recommender"),
                )
            except P13nError as exc:
                self._observer.backend(variation.type, exc.code, time.perf_counter() - started)
                breaker.ended(exc)
                if isinstance(exc, PermanentError):
                    raise  # the request itself was refused: a fallback would ignore what it asked
                log.warning(
                    "variation %s/%s/%s failed: %s", ns.key, rec.name, variation.name, exc.message
                )
                first_error = first_error or exc
                continue
            self._observer.backend(variation.type, "ok", time.perf_counter() - started)
            breaker.succeeded()
            return answer, variation, fell_back
        assert first_error is not None
        raise first_error

    async def _bounded(self, work: Any, seconds: float, what: str, source: str) -> Any:
        """``work`` with a deadline; anything but a ``P13nError`` escaping a backend becomes a
        502 that names no internals (the traceback goes to the log). A backend's failure
        (retryable: throttled, timed out, failed) carries ``source`` as its error type, the
        sample's ``Personalize``, ``Function``, ``SageMaker``...; the caller's own mistakes
        stay ``Validation``."""
        try:
            return await asyncio.wait_for(work, seconds + TIMEOUT_SLACK_SECONDS)
        except TimeoutError:
            raise UpstreamTimeout(
                f"the {what} did not answer within {seconds:g} s", type_=source
            ) from None
        except RetryableError as exc:
            exc.type = source
            raise
        except P13nError:
            raise
        except Exception as exc:
            log.error("unexpected failure of the %s", what, exc_info=exc)
            raise UpstreamError(f"the {what} failed", type_=source) from None

    async def _decorate(
        self, built: _Built, settings: Mapping[str, Any], query: Query, answer: Recommendations
    ) -> Recommendations:
        store = built.metadata_store(settings)
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

    # -- exposures -----------------------------------------------------------------------------

    def _expose(
        self, query: Query, rec: Recommender, choice: Choice, entry: Entry, now: float
    ) -> None:
        if choice.experiment is None or query.user_id is None or self._exposures is None:
            return
        record = {
            "recordId": new_record_id(int(now * 1000)),
            "namespace": query.namespace,
            "receivedAt": int(now * 1000),
            "partitionKeyField": "userId",
            "userId": query.user_id,
            "sessionId": None,
            "action": query.action,
            "recommender": rec.name,
            "feature": choice.experiment.feature,
            "variation": choice.variation.name,
            "recommendationId": entry.recommendation_id,
        }
        data = self._codec.encode(EXPOSURE, record)
        if self._exposures.offer(StreamEntry(query.user_id, data)):
            self._observer.exposure("written")
            return
        self._observer.exposure("dropped")
        if now - self._dropped_logged_at >= 10:
            self._dropped_logged_at = now
            log.warning("exposure records are being dropped: the producer queue is full")

    # -- headers -------------------------------------------------------------------------------

    def _cache_headers(self, policy: Policy, etag: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        value = policy.header()
        if value is not None:
            headers["cache-control"] = value
        if etag is not None:
            headers["etag"] = etag
        return headers

    def _headers(self, policy: Policy, entry: Entry, outcome: str) -> dict[str, str]:
        headers = self._cache_headers(policy, entry.etag)
        headers["content-type"] = "application/json"
        headers["x-p13n-cache"] = outcome
        if outcome in ("hit", "stale"):
            headers["age"] = str(int(time.monotonic() - entry.created))
        if outcome == "stale":
            headers["warning"] = STALE_WARNING
        if entry.fallback:
            headers["x-p13n-fallback"] = "true"
        return headers

    # -- config lifecycle ----------------------------------------------------------------------

    def _current(self) -> _Built:
        config = self._holder.current
        built = self._built
        if built is None or built.config is not config:
            self._built = _Built(config)
            self._cache.clear()
            if built is not None:
                self._retire(built)
        return self._built  # type: ignore[return-value]

    def _breaker(self, ns: Namespace, rec: Recommender, variation: Variation) -> Breaker:
        key = (ns.key, rec.action, rec.name, variation.name)
        found = self._breakers.get(key)
        if found is None:
            found = self._breakers[key] = self._new_breaker()
        return found

    def _retire(self, built: _Built) -> None:
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


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
