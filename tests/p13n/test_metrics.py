"""The per-request figures read as prometheus_client's own counters and histogram would:
same names, labels, cumulative buckets (a value on a bound counts in that bucket) and sums
(without the optional ``_created`` samples)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from p13n.metrics import LATENCY_BUCKETS, Metrics

requests = st.lists(
    st.tuples(
        st.sampled_from(["/events/{namespace}", "/recommend-items/{a}/{b}/{c}", "unmatched"]),
        st.sampled_from(["GET", "POST"]),
        st.sampled_from([200, 202, 400, 404, 503]),
        st.sampled_from([0.0, 0.0005, 0.001, 0.0031, 0.25, 7.0, 11.0])
        | st.floats(min_value=0, max_value=20),
        st.none() | st.sampled_from(["InvalidRequest", "NamespaceNotFound"]),
    ),
    max_size=40,
)


def _lines(text: bytes) -> list[str]:
    wanted = ("p13n_http_request", "p13n_http_rejections_total", "p13n_query_cache_total")
    # Not the "_created" samples: optional in the text format, and they say nothing here.
    return sorted(
        line
        for line in text.decode().splitlines()
        if line.startswith(wanted) and "_created{" not in line
    )


@given(requests, st.lists(st.sampled_from(["hit", "miss", "stale"]), max_size=10))
def test_request_figures_equal_prometheus_client(observed, outcomes):
    metrics = Metrics()
    registry = CollectorRegistry()
    reference_requests = Counter(
        "p13n_http_requests", "x", ["route", "method", "status"], registry=registry
    )
    latency = Histogram(
        "p13n_http_request_duration_seconds",
        "x",
        ["route"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    rejections = Counter("p13n_http_rejections", "x", ["code"], registry=registry)
    cache = Counter("p13n_query_cache", "x", ["outcome"], registry=registry)
    for route, method, status, seconds, code in observed:
        metrics.observe_request(route, method, status, seconds, code)
        reference_requests.labels(route, method, str(status)).inc()
        latency.labels(route).observe(seconds)
        if code is not None:
            rejections.labels(code).inc()
    for outcome in outcomes:
        metrics.cache(outcome)
        cache.labels(outcome).inc()
    ours = _lines(metrics.exposition())
    theirs = _lines(generate_latest(registry))
    # Sums are floats added in the same order: equal to the last digit.
    assert ours == theirs
