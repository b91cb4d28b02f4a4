"""Pacing: a token bucket for average rates (replay's ``--rate``) and a sliding-window limiter
for quotas (a target's ``maxCallsPerSecond``).

Pacing is not retrying: ``acquire`` waits until a token is free so that the configured rate is
never exceeded, and the caller then makes its call once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; thread-safe."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def try_acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` if they are there now and return 0; else take nothing and return the
        seconds until they would be (for a 429's ``Retry-After``)."""
        with self._lock:
            return self._take(tokens)

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, waiting as long as needed; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                wait = self._take(tokens)
            if not wait:
                return waited
            self._sleep(wait)
            waited += wait

    def _take(self, tokens: float) -> float:
        """Refill for the time passed, then take ``tokens`` (0 returned) or say how long until
        they are there. Called with the lock held."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        # The epsilon: after sleeping exactly the computed wait, float rounding can leave the
        # bucket a hair short, which would otherwise spin on tiny waits.
        if self._tokens >= tokens - 1e-9:
            self._tokens = max(0.0, self._tokens - tokens)
            return 0.0
        return (tokens - self._tokens) / self.rate


class WindowLimiter:
    """At most ``limit`` acquisitions in any ``window`` seconds — a quota, not an average.

    A token bucket lets ``rate + burst`` through in a second; a service quota such as
    Personalize's calls per second must not be exceeded in any second. This keeps the times of
    the last ``limit`` acquisitions and lets a new one through only once the oldest of them is
    a full window old. Thread-safe.
    """

    def __init__(
        self,
        limit: int,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait until one more acquisition fits the window; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._times and now - self._times[0] >= self.window:
                    self._times.popleft()
                if len(self._times) < self.limit:
                    self._times.append(now)
                    return waited
                wait = self.window - (now - self._times[0])
            self._sleep(wait)
            waited += wait
