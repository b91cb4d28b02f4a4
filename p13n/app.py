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
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from p13n.logs import AccessLog
from p13n.metrics import Metrics
from query.service import QueryService
from query.variations import evidently_features
from schemas.codec import Codec
from schemas.config import Config
from schemas.sources import ConfigHolder, source_for
from streams.base import StreamWriter
from streams.factory import build_reader, build_writer
from streams.producer import Producer
from web import stack
from web.docs import docs_routes
from web.events import EventsEndpoint
from web.health import Readiness, healthz
from web.recommendations import routes as recommendation_routes

log = logging.getLogger("p13n.app")

# Allocations between two collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def create_app(
    holder: ConfigHolder,
    *,
    writer: StreamWriter | None = None,
    clock: Callable[[], datetime] | None = None,
    access_log: AccessLog | None = None,
    metrics: Metrics | None = None,
    consumers: Callable[[], dict[str, dict[str, Any]]] | None = None,
) -> ASGIApp:
    """``consumers`` reports the consumer groups running in this process (``ConsumerSet.health``)
    for ``/readyz`` and the ``p13n_consumer_state`` metric."""
    metrics = metrics or Metrics()
    access_log = access_log or AccessLog(
        enabled=logging.getLogger("p13n.access").isEnabledFor(logging.INFO)
    )
    producer = Producer(
        writer or build_writer(holder.current), holder.current.stream.producer, metrics
    )
    readiness = Readiness(lambda: build_reader(holder.current), consumers)
    watch(holder, metrics, producer, consumers)
    codec = Codec.packaged()
    events = EventsEndpoint(holder, producer, codec, **({"clock": clock} if clock else {}))
    query = QueryService(holder, exposures=producer, codec=codec, observer=metrics)
    service = _Service(holder, producer, query, readiness, access_log)
    return stack.build(
        routes(holder, events, query, readiness, metrics),
        stack.middleware(holder, metrics, access_log),
        lifespan=service.lifespan,
    )


def watch(
    holder: ConfigHolder,
    metrics: Metrics,
    producer: Producer,
    consumers: Callable[[], dict[str, dict[str, Any]]] | None,
) -> None:
    """What the metrics follow: the producer's queue, the consumer groups, config reloads."""
    metrics.watch_queue(lambda: producer.depth)
    if consumers is not None:
        metrics.watch_consumers(consumers)
    holder.subscribe(lambda old, new: _on_reload(metrics, old, new))


def routes(
    holder: ConfigHolder,
    events: EventsEndpoint,
    query: QueryService,
    readiness: Readiness,
    metrics: Metrics,
) -> list[BaseRoute]:
    """Every route of the service: the one router matches them, in this order."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    return [
        Route("/events/{namespace}", events, methods=["POST"]),
        *recommendation_routes(query, holder),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readiness.endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *docs_routes(holder),
    ]


class _Service:
    """What the app's lifespan starts and stops, in order."""

    def __init__(
        self,
        holder: ConfigHolder,
        producer: Producer,
        query: QueryService,
        readiness: Readiness,
        access_log: AccessLog,
    ) -> None:
        self.holder = holder
        self.producer = producer
        self.query = query
        self.readiness = readiness
        self.access_log = access_log

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        self.producer.start()
        self.holder.start()
        # Everything built so far lives as long as the process: move it out of the collector's
        # reach, so a full collection scans only what requests created (it scanned the whole
        # heap, 30-70 ms with the event loop stopped, every few thousand requests).
        gc.collect()
        gc.freeze()
        # A request allocates a few dozen containers (dicts, lists, coroutines), nearly all
        # freed by reference counting when it is answered. At CPython's default of 700
        # allocations a young-generation collection then ran every dozen or so requests, each
        # tracing the requests in flight; at 20,000 it runs every few hundred. Garbage in
        # reference cycles waits at most that many allocations to be freed.
        # bench.ingest: the service's CPU per event 5-7% lower, as low as with collection off.
        gc.set_threshold(GC_YOUNG_THRESHOLD)
        log.info("p13n ready: %s", self.holder.current.summary(), extra={"pid": os.getpid()})
        warn_evidently(self.holder.current)
        warn_placeholders(self.holder.current)
        flusher = asyncio.get_running_loop().create_task(_flush_every(self.access_log, 1.0))
        try:
            yield
        finally:
            flusher.cancel()
            self.access_log.flush()
            # Requests in flight have been answered by now; write whatever is still queued.
            self.holder.stop()
            await self.query.close()
            await anyio.to_thread.run_sync(self.producer.close)
            self.readiness.close()
            log.info("p13n stopped: producer drained")


def warn_evidently(config: Config) -> None:
    evidently = evidently_features(config)
    if evidently:
        log.warning(
            "CloudWatch Evidently was discontinued in 2025: experiments %s are assigned "
            "locally (the same users get the same variations in every process), and "
            "exposures and conversions flow through the stream to the experiments target",
            ", ".join(evidently),
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


def app_from_environment() -> ASGIApp:
    level = os.environ.get("P13N_LOG_LEVEL")
    if level:  # a worker of `p13n serve --workers N`: the JSON logs its parent would write
        from p13n import logs

        logs.configure(level)
    return create_app(holder_from_environment())
