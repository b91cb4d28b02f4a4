"""The ASGI application factory: the composition root of the service.

``create_app`` builds everything the service holds (stream writer, producer, endpoints, metrics)
from a ``ConfigHolder`` before the first request, so a bad config or an unusable stream fails at
start-up. ``app_from_environment`` is the zero-argument factory uvicorn workers call.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from p13n.logs import AccessLog
from p13n.metrics import Metrics
from query.service import QueryService
from query.variations import evidently_features
from schemas.codec import Codec
from schemas.config import Config
from schemas.errors import P13nError
from schemas.sources import ConfigHolder, source_for
from streams.base import StreamReader, StreamWriter
from streams.factory import build_reader, build_writer
from streams.producer import Producer
from web.docs import docs_routes
from web.errors import HANDLERS
from web.events import EventsEndpoint
from web.middleware import Front
from web.recommendations import routes as recommendation_routes

log = logging.getLogger("p13n.app")

READY_CACHE_SECONDS = 2.0


class Readiness:
    """``/readyz``: the stream answers (checked at most every couple of seconds), and how the
    consumer groups this process runs are doing.

    503 only when the stream does not answer: events are then refused. A consumer group that is
    paused (an operator error: AWS credentials, a placeholder in the config) or stopped makes
    the answer ``degraded`` with 200 — events are still taken and kept in the stream for it —
    and ``targets`` says which group and why.
    """

    def __init__(
        self,
        reader: Callable[[], StreamReader],
        consumers: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self._make_reader = reader
        self._consumers = consumers
        self._reader: StreamReader | None = None
        self._checked_at = -READY_CACHE_SECONDS
        self._problem: str | None = "not checked yet"

    def _check(self) -> None:
        try:
            if self._reader is None:
                self._reader = self._make_reader()
            self._reader.list_shards()
            self._problem = None
        except P13nError as exc:
            self._problem = exc.message

    async def endpoint(self, request: Request) -> Response:
        if time.monotonic() - self._checked_at >= READY_CACHE_SECONDS:
            await anyio.to_thread.run_sync(self._check)
            self._checked_at = time.monotonic()
        body: dict[str, Any] = {"status": "ready"}
        if self._problem is not None:
            body = {"status": "unavailable", "reason": self._problem}
        if self._consumers is not None:
            targets = self._consumers()
            body["targets"] = targets
            failing = sorted(
                group for group, h in targets.items() if h["state"] in ("paused", "stopped")
            )
            if failing and self._problem is None:
                body["status"] = "degraded"
                body["reason"] = "consumer group(s) not delivering: " + ", ".join(failing)
        return JSONResponse(body, status_code=503 if self._problem is not None else 200)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(
    holder: ConfigHolder,
    *,
    writer: StreamWriter | None = None,
    clock: Callable[[], datetime] | None = None,
    access_log: AccessLog | None = None,
    metrics: Metrics | None = None,
    consumers: Callable[[], dict[str, dict[str, Any]]] | None = None,
) -> Front:
    """``consumers`` reports the consumer groups running in this process (``ConsumerSet.health``)
    for ``/readyz`` and the ``p13n_consumer_state`` metric."""
    config = holder.current
    metrics = metrics or Metrics()
    access_log = access_log or AccessLog(
        enabled=logging.getLogger("p13n.access").isEnabledFor(logging.INFO)
    )
    producer = Producer(writer or build_writer(config), config.stream.producer, metrics)
    metrics.watch_queue(lambda: producer.depth)
    readiness = Readiness(lambda: build_reader(holder.current), consumers)
    if consumers is not None:
        metrics.watch_consumers(consumers)
    holder.subscribe(lambda old, new: _on_reload(metrics, old, new))
    codec = Codec.packaged()
    events = EventsEndpoint(holder, producer, codec, **({"clock": clock} if clock else {}))
    query = QueryService(holder, exposures=producer, codec=codec, observer=metrics)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        producer.start()
        holder.start()
        # Everything built so far lives as long as the process: move it out of the collector's
        # reach, so a full collection scans only what requests created (it scanned the whole
        # heap, 30-70 ms with the event loop stopped, every few thousand requests).
        gc.collect()
        gc.freeze()
        log.info("p13n ready: %s", holder.current.summary(), extra={"pid": os.getpid()})
        evidently = evidently_features(holder.current)
        if evidently:
            log.warning(
                "CloudWatch Evidently was discontinued in 2025: experiments %s are assigned "
                "locally (the same users get the same variations in every process), and "
                "exposures and conversions flow through the stream to the experiments target",
                ", ".join(evidently),
            )
        warn_placeholders(holder.current)
        flusher = asyncio.get_running_loop().create_task(_flush_every(access_log, 1.0))
        try:
            yield
        finally:
            flusher.cancel()
            access_log.flush()
            # Requests in flight have been answered by now; write whatever is still queued.
            holder.stop()
            await query.close()
            await anyio.to_thread.run_sync(producer.close)
            readiness.close()
            log.info("p13n stopped: producer drained")

    # First in the list, so the router would pick it too for what it matches (direct routes).
    events_route = Route("/events/{namespace}", events.post, methods=["POST"])
    # No route before them overlaps these paths either.
    query_routes = recommendation_routes(query, holder)
    routes = [
        events_route,
        *query_routes,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readiness.endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *docs_routes(holder),
    ]
    application = Starlette(
        routes=routes,
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    return Front(
        application,
        metrics=metrics,
        config=holder,
        access_log=access_log,
        routes=[(events_route, events.asgi), *((r, r.app) for r in query_routes)],
    )


async def _flush_every(access_log: AccessLog, seconds: float) -> None:
    """Quiet periods still get their last lines written within a second."""
    while True:
        await asyncio.sleep(seconds)
        access_log.flush()


def warn_placeholders(config: Config) -> None:
    """One warning per variation with a ``[PLACEHOLDER]`` left in its settings (the sample
    project's ``[REGION]``, ``[ACCOUNT]``…): its requests fail until the config is fixed.
    (Event targets with one pause their consumer group, see ``consumers.supervisor``.)"""
    from consumers.supervisor import find_placeholders

    for ns in config.namespaces.values():
        for action, by_name in ns.recommenders.items():
            for recommender in by_name.values():
                for variation in recommender.variations.values():
                    found = find_placeholders(dict(variation.options))
                    if found:
                        log.warning(
                            "variation %s/%s/%s/%s has a placeholder left in the config (%s); "
                            "its requests fail until it is filled in",
                            ns.key,
                            action,
                            recommender.name,
                            variation.name,
                            "; ".join(found),
                        )


def _on_reload(metrics: Metrics, old: Config, new: Config) -> None:
    metrics.config_reloads.inc()
    warn_placeholders(new)
    if old.stream != new.stream or old.data_dir != new.data_dir:
        log.warning(
            "stream or data folder settings changed in the config; the service and its "
            "consumers keep the old ones until a restart"
        )


def holder_from_environment() -> ConfigHolder:
    """Config from ``P13N_CONFIG`` (or the built-in default), ``P13N_DATA_DIR`` overriding."""
    data_dir = os.environ.get("P13N_DATA_DIR")

    def adjust(config: Config) -> Config:
        return config.with_data_dir(data_dir) if data_dir else config

    return ConfigHolder(source_for(None), adjust=adjust)


def app_from_environment() -> Front:
    level = os.environ.get("P13N_LOG_LEVEL")
    if level:  # a worker of `p13n serve --workers N`: the JSON logs its parent would write
        from p13n import logs

        logs.configure(level)
    return create_app(holder_from_environment())
