"""Pacing primitives with a fake clock: exact, no waiting on the wall clock."""

from __future__ import annotations

from consumers.ratelimit import TokenBucket, WindowLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_window_limiter_never_lets_more_than_the_limit_into_any_window():
    clock = Clock()
    limiter = WindowLimiter(5, window=1.0, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(23):
        limiter.acquire()
        times.append(clock.now)
    for start in times:
        assert sum(start <= t < start + 1.0 for t in times) <= 5
    assert times[-1] >= 4.0  # 23 acquisitions at 5 a second need 4 full windows


def test_token_bucket_keeps_the_average_rate_after_its_burst():
    clock = Clock()
    bucket = TokenBucket(10, burst=2, clock=clock, sleep=clock.sleep)
    for _ in range(22):
        bucket.acquire()
    assert abs(clock.now - 2.0) < 1e-9  # 2 from the burst, then 20 at 10 a second
