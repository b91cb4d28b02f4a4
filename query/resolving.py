"""Resolving a query with the chosen variation, under its timeout and circuit breaker, with
its ``fallback`` (one hop).

The breaker counts only the backend's own failures (``query.breaker.is_backend_failure``). On
a failure or an open breaker the fallback is tried; a request the resolver refuses
(``PermanentError``, e.g. a malformed filter name) is raised at once, since a fallback would
ignore what it asked. When every candidate failed, the first error is raised (429 throttled,
502 upstream, 503 circuit open, 504 timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from query.backends import Backends
from query.base import Query, Recommendations
from query.breaker import Breaker
from query.observer import Observer
from query.resolvers import ERROR_TYPES
from schemas.config import Namespace, Recommender, Variation
from schemas.errors import (
    P13nError,
    PermanentError,
    RetryableError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger("p13n.query")

TIMEOUT_SLACK_SECONDS = 0.05


class Resolving:
    """The breakers of every variation (kept across reloads) and the fallback rule."""

    def __init__(self, observer: Observer, breaker: Callable[[], Breaker]) -> None:
        self._observer = observer
        self._new_breaker = breaker
        self._breakers: dict[tuple[str, str, str, str], Breaker] = {}

    async def resolve(
        self, backends: Backends, ns: Namespace, rec: Recommender, chosen: Variation, query: Query
    ) -> tuple[Recommendations, Variation, bool]:
        """The answer, the variation that gave it, and whether that was the fallback."""
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
            try:
                answer = await self._call(backends, ns, rec, variation, query, breaker)
            except PermanentError:
                raise  # the request itself was refused: a fallback would ignore what it asked
            except P13nError as exc:
                log.warning(
                    "variation %s/%s/%s failed: %s", ns.key, rec.name, variation.name, exc.message
                )
                first_error = first_error or exc
                continue
            return answer, variation, fell_back
        assert first_error is not None
        raise first_error

    async def _call(
        self,
        backends: Backends,
        ns: Namespace,
        rec: Recommender,
        variation: Variation,
        query: Query,
        breaker: Breaker,
    ) -> Recommendations:
        """One resolver call, reported to the observer and to the breaker."""
        resolver = backends.resolver(ns, rec, variation)
        started = time.perf_counter()
        try:
            answer: Recommendations = await bounded(
                resolver.resolve(query),
                variation.timeout_ms / 1000,
                "recommender",
                ERROR_TYPES.get(variation.type, "Recommender"),
            )
        except P13nError as exc:
            self._observer.backend(variation.type, exc.code, time.perf_counter() - started)
            breaker.ended(exc)
            raise
        self._observer.backend(variation.type, "ok", time.perf_counter() - started)
        breaker.succeeded()
        return answer

    def _breaker(self, ns: Namespace, rec: Recommender, variation: Variation) -> Breaker:
        key = (ns.key, rec.action, rec.name, variation.name)
        found = self._breakers.get(key)
        if found is None:
            found = self._breakers[key] = self._new_breaker()
        return found


async def bounded(work: Any, seconds: float, what: str, source: str) -> Any:
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
