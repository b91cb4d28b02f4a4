"""Prometheus metrics of one service process, in a registry of its own (no global state)."""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consumers.base import GROUP_STATES
from streams.base import WriteStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class RequestStats(Collector):
    """The per-request figures: requests by route, method and status, latency by route,
    rejections by error code, and recommendation cache outcomes.

    A request costs a few dict updates here. prometheus_client's counters and histograms take
    a lock per increment and per observation, which on a cache hit was a tenth of the CPU
    the service spends. Updated from the event loop's thread only (``observe``, ``cache``);
    a scrape copies the dicts first, so a scrape from another thread sees every update
    either whole or not yet.
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._rejections: dict[str, int] = {}
        self._cache: dict[str, int] = {}
        # route -> [count per bucket (the last is +Inf), sum of seconds]
        self._latency: dict[str, list[Any]] = {}

    def observe(
        self, route: str, method: str, status: int, seconds: float, code: str | None
    ) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
        latency[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[1] += seconds
        if code is not None:
            self._rejections[code] = self._rejections.get(code, 0) + 1

    def cache(self, outcome: str) -> None:
        self._cache[outcome] = self._cache.get(outcome, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "p13n_http_requests",
            "HTTP requests by route, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in sorted(dict(self._requests).items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "p13n_http_request_duration_seconds", "HTTP request latency by route", labels=["route"]
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for route, (counts, total) in sorted(dict(self._latency).items()):
            cumulative = list(itertools.accumulate(counts))
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)), total)
        yield latency
        rejections = CounterMetricFamily(
            "p13n_http_rejections", "Error responses by error code", labels=["code"]
        )
        for code, count in sorted(dict(self._rejections).items()):
            rejections.add_metric([code], count)
        yield rejections
        cache = CounterMetricFamily(
            "p13n_query_cache",
            "Recommendation responses by cache outcome (hit, miss, coalesced, stale, not-modified)",
            labels=["outcome"],
        )
        for outcome, count in sorted(dict(self._cache).items()):
            cache.add_metric([outcome], count)
        yield cache


class ConsumerStates(Collector):
    """``p13n_consumer_state{group, state}``: 1 for each group's current state, 0 for the
    others, read from the consumer set when scraped (nothing runs consumers: no series)."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, dict[str, Any]]] = dict

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "p13n_consumer_state",
            "Consumer group state (paused: an operator error such as missing AWS credentials)",
            labels=["group", "state"],
        )
        for group, health in sorted(self.source().items()):
            for state in GROUP_STATES:
                family.add_metric([group, state], 1.0 if health.get("state") == state else 0.0)
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Declared in this order, and so listed in this order on a scrape.
        self._process(self.registry)
        self._scraped(self.registry)
        self._producer(self.registry)
        self._stream_writes(self.registry)
        self.config_reloads = Counter(
            "p13n_config_reloads", "Config reloads applied", registry=self.registry
        )
        self._consumers(self.registry)
        self._query(self.registry)

    def _process(self, r: CollectorRegistry) -> None:
        # process_resident_memory_bytes, process_cpu_seconds_total, process_start_time_seconds…:
        # the standard per-process figures (memory growth is one to alert on).
        ProcessCollector(registry=r)
        # Which process answered a scrape: with --workers N each worker has its own figures.
        Gauge("p13n_process", "This process, by pid", ["pid"], registry=r).labels(
            str(os.getpid())
        ).set(1)

    def _scraped(self, r: CollectorRegistry) -> None:
        # Counted on every request: kept in plain dicts and turned into metric families when
        # scraped (see RequestStats), not in prometheus_client's locked values.
        self.request_stats = RequestStats()
        r.register(self.request_stats)
        self.consumer_states = ConsumerStates()
        r.register(self.consumer_states)

    def _producer(self, r: CollectorRegistry) -> None:
        """The write path in front of the stream: events accepted, batches, refusals."""
        self.events = Counter(
            "p13n_events_accepted", "Events accepted, by namespace", ["namespace"], registry=r
        )
        self.batch_records = Histogram(
            "p13n_producer_batch_records",
            "User records per producer batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "p13n_producer_batch_seconds",
            "Time to write one producer batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.producer_rejections = Counter(
            "p13n_producer_rejections",
            "Puts refused by the producer, by reason",
            ["reason"],
            registry=r,
        )

    def _stream_writes(self, r: CollectorRegistry) -> None:
        """What the producer wrote to the stream, and what waits to be written."""
        self.user_records = Counter(
            "p13n_stream_user_records_written", "User records written", registry=r
        )
        self.user_bytes = Counter(
            "p13n_stream_user_bytes_written", "User record bytes written", registry=r
        )
        self.stream_records = Counter(
            "p13n_stream_records_written",
            "Stream records written (an aggregate counts once)",
            registry=r,
        )
        self.stream_bytes = Counter(
            "p13n_stream_bytes_written", "Bytes written to the stream", registry=r
        )
        self.stream_calls = Counter(
            "p13n_stream_write_calls", "Write calls made to the stream", registry=r
        )
        self.queue_depth = Gauge(
            "p13n_producer_queue_depth", "Entries waiting for the stream", registry=r
        )

    def _consumers(self, r: CollectorRegistry) -> None:
        """Per consumer group: outcomes of deliveries, and lag."""
        self.consumer_delivered = Counter(
            "p13n_consumer_delivered",
            "Records delivered to a target, by consumer group",
            ["group"],
            registry=r,
        )
        self.consumer_dead_letters = Counter(
            "p13n_consumer_dead_letters",
            "Records dead-lettered, by consumer group",
            ["group"],
            registry=r,
        )
        self.consumer_retries = Counter(
            "p13n_consumer_retries",
            "Record deliveries retried, by consumer group",
            ["group"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "p13n_consumer_millis_behind_latest",
            "How far a consumer group is behind the tip of a shard",
            ["group", "shard"],
            registry=r,
        )

    def _query(self, r: CollectorRegistry) -> None:
        """The recommendations path: backend calls, fallbacks, decoration, exposures."""
        self.query_backend = Histogram(
            "p13n_query_backend_seconds",
            "Recommender backend calls by variation type and outcome (ok or error code)",
            ["type", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.query_fallbacks = Counter(
            "p13n_query_fallbacks",
            "Requests served by a fallback variation, by reason (failed, open)",
            ["reason"],
            registry=r,
        )
        self.query_decoration_failures = Counter(
            "p13n_query_decoration_failures",
            "Responses served undecorated because the item metadata store failed",
            registry=r,
        )
        self.query_exposures = Counter(
            "p13n_query_exposures",
            "Experiment exposure records offered to the stream, by outcome (written, dropped)",
            ["outcome"],
            registry=r,
        )

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, code: str | None
    ) -> None:
        self.request_stats.observe(route, method, status, seconds, code)

    def watch_consumers(self, health: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.consumer_states.source = health

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    # ProducerMetrics
    def batch_written(
        self, entries: int, entry_bytes: int, stats: WriteStats, seconds: float
    ) -> None:
        self.batch_records.observe(entries)
        self.batch_seconds.observe(seconds)
        self.user_records.inc(entries)
        self.user_bytes.inc(entry_bytes)
        self.stream_records.inc(stats.stream_records)
        self.stream_bytes.inc(stats.stream_bytes)
        self.stream_calls.inc(stats.calls)

    def rejected(self, reason: str) -> None:
        self.producer_rejections.labels(reason).inc()

    # ConsumerMetrics
    def settled(self, group: str, delivered: int, dead_lettered: int, retries: int) -> None:
        self.consumer_delivered.labels(group).inc(delivered)
        self.consumer_dead_letters.labels(group).inc(dead_lettered)
        self.consumer_retries.labels(group).inc(retries)

    def lag(self, group: str, shard_id: str, millis_behind: int) -> None:
        self.consumer_lag.labels(group, shard_id).set(millis_behind)

    # query.service.Observer
    def cache(self, outcome: str) -> None:
        self.request_stats.cache(outcome)

    def backend(self, variation_type: str, outcome: str, seconds: float) -> None:
        self.query_backend.labels(variation_type, outcome).observe(seconds)

    def fallback(self, reason: str) -> None:
        self.query_fallbacks.labels(reason).inc()

    def decoration_failed(self) -> None:
        self.query_decoration_failures.inc()

    def exposure(self, outcome: str) -> None:
        self.query_exposures.labels(outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
