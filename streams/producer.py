"""The group-commit producer between request handlers and a ``StreamWriter``.

Contract:

* ``await put(entry)`` returns only after the entry is durable in the stream (the writer's
  ``put_batch`` succeeded for the batch holding it). Many concurrent puts share one batch:
  one SQLite transaction or one PutRecords call.
* It never holds an accepted entry only in memory: when the queue is full, when the producer is
  closing, or while the stream is known to be unreachable, ``put`` raises ``Unavailable``
  (503 with ``Retry-After``) at once, before anything is queued.
* A batch is written when it reaches ``max_batch_records`` or ``max_batch_bytes``, or
  ``linger_ms`` after its first entry was taken; one batch is in flight at a time, so entries
  reach the writer in the order ``put`` was called, and the writer keeps that order per key.
* ``offer(entry)`` queues without waiting (exposures); it returns False instead of raising.
* ``close()`` stops accepting, writes everything still queued, then closes the writer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from schemas.config import ProducerConfig
from schemas.errors import P13nError, RetryableError, Unavailable
from streams.base import Entry, StreamWriter, WriteStats, Written

log = logging.getLogger("p13n.producer")

# After a failed write, how long new puts are refused at once (doubles up to the cap).
UNAVAILABLE_BACKOFF = (0.5, 8.0)


class ProducerMetrics(Protocol):
    """What the producer reports; ``p13n.metrics`` implements it with Prometheus."""

    def batch_written(
        self, entries: int, entry_bytes: int, stats: WriteStats, seconds: float
    ) -> None: ...

    def rejected(self, reason: str) -> None: ...


@dataclass(eq=False, slots=True)
class _Pending:
    entry: Entry
    size: int
    enqueued: float  # monotonic
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Written] | None = None
    cancelled: bool = False


class Producer:
    def __init__(
        self,
        writer: StreamWriter,
        config: ProducerConfig,
        metrics: ProducerMetrics | None = None,
    ) -> None:
        self._writer = writer
        self._config = config
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        # A plain lock under the condition: nothing takes it twice, and it is faster to take
        # than the default re-entrant one (every put takes it).
        self._lock = threading.Condition(threading.Lock())
        self._closing = False
        self._unavailable_until = 0.0
        self._backoff = UNAVAILABLE_BACKOFF[0]
        self._thread = threading.Thread(target=self._run, name="p13n-producer", daemon=True)

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def put(self, entry: Entry) -> Written:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Written] = loop.create_future()
        pending = _Pending(entry, _size(entry), time.monotonic(), loop, future)
        self._enqueue(pending)
        # A plain timer, not asyncio.wait_for: this is the hot path, and wait_for wraps the
        # future in a task of its own.
        timer = loop.call_later(self._config.put_timeout_ms / 1000, self._expire, pending)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, pending: _Pending) -> None:
        """On the event loop: the put waited too long. Withdraw it if still queued; an entry
        already with the writer may still be written (at least once), but its caller is told
        to retry."""
        with self._lock:
            pending.cancelled = True
        if pending.future is not None and not pending.future.done():
            self._reject("timeout")
            pending.future.set_exception(
                Unavailable("the stream did not confirm the write in time", retry_after=1)
            )

    def offer(self, entry: Entry) -> bool:
        try:
            self._enqueue(_Pending(entry, _size(entry), time.monotonic()))
        except Unavailable:
            return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._writer.close()

    # -- queueing -----------------------------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> None:
        with self._lock:
            if self._closing:
                reason, message = "closing", "the service is shutting down"
            elif time.monotonic() < self._unavailable_until:
                reason, message = "unavailable", "the stream is unreachable"
            elif len(self._queue) >= self._config.queue_size:
                reason, message = "queue_full", "too many events waiting for the stream"
            else:
                self._queue.append(pending)
                if len(self._queue) == 1:
                    self._lock.notify()
                return
        self._reject(reason)
        raise Unavailable(message, retry_after=1, code="StreamUnavailable")

    def _reject(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejected(reason)

    def _take_batch(self) -> list[_Pending] | None:
        """Wait for entries and return one batch; None once closing and drained."""
        cfg = self._config
        with self._lock:
            while not self._queue:
                if self._closing:
                    return None
                self._lock.wait()
            deadline = self._queue[0].enqueued + cfg.linger_ms / 1000
            while (
                not self._closing
                and len(self._queue) < cfg.max_batch_records
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._lock.wait(remaining)
            batch: list[_Pending] = []
            size = 0
            while self._queue and len(batch) < cfg.max_batch_records:
                head = self._queue[0]
                if batch and size + head.size > cfg.max_batch_bytes:
                    break
                self._queue.popleft()
                if not head.cancelled:
                    batch.append(head)
                    size += head.size
            return batch

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        try:
            written, stats = self._writer.put_batch([p.entry for p in batch])
        except P13nError as exc:
            self._failed(batch, exc)
            return
        except Exception as exc:  # a writer bug must not kill the thread and strand requests
            log.exception("stream writer failed unexpectedly")
            self._failed(batch, Unavailable(f"stream write failed: {type(exc).__name__}"))
            return
        self._backoff = UNAVAILABLE_BACKOFF[0]
        if self._metrics is not None:
            self._metrics.batch_written(
                len(batch), sum(p.size for p in batch), stats, time.monotonic() - started
            )
        _resolve(batch, lambda i: (written[i], None))

    def _failed(self, batch: list[_Pending], exc: P13nError) -> None:
        log.warning(
            "stream write failed for %d entries: %s",
            len(batch),
            exc.message,
            extra={"code": exc.code},
        )
        if isinstance(exc, RetryableError):
            with self._lock:
                self._unavailable_until = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, UNAVAILABLE_BACKOFF[1])
        # To the client every write failure is the same: not accepted, retry later.
        error = Unavailable(
            f"the stream did not accept the write: {exc.message}",
            code="StreamUnavailable",
            retry_after=exc.retry_after or 1,
        )
        _resolve(batch, lambda i: (None, error))


def _size(entry: Entry) -> int:
    return len(entry.data) + len(entry.partition_key)


def _resolve(
    batch: list[_Pending],
    outcome: Callable[[int], tuple[Written | None, BaseException | None]],
) -> None:
    """Settle the waiting futures, one hop per event loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Written], int]]] = {}
    for index, pending in enumerate(batch):
        if pending.loop is not None and pending.future is not None:
            by_loop.setdefault(pending.loop, []).append((pending.future, index))

    for loop, futures in by_loop.items():

        def settle(futures: list[tuple[asyncio.Future[Written], int]] = futures) -> None:
            for future, index in futures:
                if future.done():
                    continue
                result, error = outcome(index)
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)  # type: ignore[arg-type]

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:
            log.warning("an event loop closed before its %d writes were confirmed", len(futures))
