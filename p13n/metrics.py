"""Prometheus metrics of one service process, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streams.base import WriteStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "p13n_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "p13n_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "p13n_http_rejections", "Error responses by error code", ["code"], registry=r
        )
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
        self.config_reloads = Counter("p13n_config_reloads", "Config reloads applied", registry=r)

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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
