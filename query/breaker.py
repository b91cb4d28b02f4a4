"""A circuit breaker per variation: stop calling a backend that keeps failing.

Closed: calls pass; ``threshold`` consecutive failures open it. Open: calls are refused for
``cooldown`` seconds (the service serves the fallback, a stale entry, or 503). Then half-open:
one trial call passes; success closes the breaker, failure opens it again for another cooldown.

What counts as a failure is ``is_backend_failure``: only what tells that the backend itself is
unwell — a timeout, a 5xx, a connection that failed, an answer that is not one. A request the
backend refused (its own 4xx: a filter it does not know, a value it rejects) or that p13n refused
before calling it says nothing about the backend's health, or the breaker would let five bad
requests (``?filter=bad!name``) cut every user off for a cooldown. Throttling is not counted
either: the backend is healthy and asks for less, which adaptive retries and ``Retry-After``
give it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from schemas.errors import P13nError, PermanentError, Throttled, UpstreamError

# 4xx statuses that still say the backend failed: it timed out, or what it depends on did.
_FAILED_4XX = frozenset({408, 424})


def is_backend_failure(error: P13nError) -> bool:
    """Whether ``error``, raised by a resolver, counts against its backend's health."""
    if isinstance(error, Throttled | PermanentError):
        return False
    if isinstance(error, UpstreamError) and error.backend_status is not None:
        status = error.backend_status
        return not (400 <= status < 500) or status in _FAILED_4XX
    return True


class Breaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.cooldown:
            return "open"
        return "half-open"

    def retry_after(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only the one trial call)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._trial_running = False

    def released(self) -> None:
        """A call ended without telling anything about health (throttled, or the request
        refused): the count stays as it was, and a half-open breaker lets the next trial out."""
        self._trial_running = False

    def ended(self, error: P13nError) -> None:
        """A call ended with ``error``: ``failed`` or ``released`` as ``is_backend_failure``
        says."""
        if is_backend_failure(error):
            self.failed()
        else:
            self.released()
