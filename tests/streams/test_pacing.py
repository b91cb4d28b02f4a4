"""Pacing primitives: the token bucket on a fake clock, the call quota with real threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from streams.pacing import CallQuota, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_call_quota_never_has_more_than_the_limit_in_any_window() -> None:
    """Real threads and the real clock: a call holds its slot from before it starts until a
    window after it ends, so no window ever sees more than ``limit`` calls begin."""
    quota = CallQuota(5, window=0.2)
    starts: list[float] = []
    lock = threading.Lock()

    def one_call() -> None:
        with quota.call(), lock:
            starts.append(time.monotonic())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: one_call(), range(23)))
    starts.sort()
    for first in starts:
        assert sum(first <= t < first + 0.2 for t in starts) <= 5
    assert starts[-1] - starts[0] >= 0.8  # 23 calls at 5 per 0.2 s need 4 more windows


def test_token_bucket_keeps_the_average_rate_after_its_burst():
    clock = Clock()
    bucket = TokenBucket(10, burst=2, clock=clock, sleep=clock.sleep)
    for _ in range(22):
        bucket.acquire()
    assert abs(clock.now - 2.0) < 1e-9  # 2 from the burst, then 20 at 10 a second
