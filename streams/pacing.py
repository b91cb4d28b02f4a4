"""Pacing: a token bucket for average rates (replay's ``--rate``, API keys' rate limits) and a
call quota for service limits (a target's ``maxCallsPerSecond``).

Pacing is not retrying: ``acquire`` waits until a token is free so that the configured rate is
never exceeded, and the caller then makes its call once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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


class CallQuota:
    """At most ``limit`` calls in any ``window`` seconds at the service; thread-safe.

    ``call()`` is entered around one call: it waits for a free slot, and the call holds it
    until the context exits (its answer is in) and for ``window`` seconds after. A call arrives
    at the service after it took its slot and before its answer comes back, so two calls that
    arrive less than ``window`` apart always overlap in the count. Unlike limiting when
    requests start, this holds with no margin for delays before sending or in the service.
    """

    def __init__(
        self, limit: int, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._ended: deque[float] = deque()  # when calls still in the window ended, in order
        self._in_flight = 0
        self._state = threading.Condition()
        # One caller at a time waits for a slot; the others queue on this lock rather than all
        # waking whenever one slot frees.
        self._turn = threading.Lock()

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._turn, self._state:
            while True:
                now = self._clock()
                while self._ended and now - self._ended[0] >= self.window:
                    self._ended.popleft()
                if self._in_flight + len(self._ended) < self.limit:
                    break
                # Full: the oldest ended call leaves the window at a known time; if every slot
                # is in flight, wait for one to end (``call`` notifies).
                self._state.wait(self.window - (now - self._ended[0]) if self._ended else None)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._state:
                self._in_flight -= 1
                self._ended.append(self._clock())
                if len(self._ended) == 1:
                    self._state.notify()  # a waiter may be waiting with no deadline
