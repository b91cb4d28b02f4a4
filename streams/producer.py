"""The group-commit producer between request handlers and a ``StreamWriter``.

Contract:

* ``await put(entry)`` returns only after the entry is durable in the stream (the writer
  confirmed the call carrying it). Many concurrent puts share one call: one SQLite transaction
  or one PutRecords.
* It never holds an accepted entry only in memory: when the queue is full, when the producer is
  closing, or while the stream is known to be unreachable, ``put`` raises ``Unavailable``
  (503 with ``Retry-After``) at once, before anything is queued.
* Entries wait in *lanes* (``LanedWriter.lane``: a Kinesis shard; one lane for other writers).
  A lane's batch is written when it reaches ``max_batch_records`` or ``max_batch_bytes``, or
  ``linger_ms`` after its oldest entry arrived or its previous call ended, whichever is later
  (so the callers that call answered can join the next one); a call carries the batches of
  every idle lane that has entries, once one of them is ready. Up to ``max_in_flight`` calls run at once, but a lane is in at most one of them, so
  a lane's entries reach the stream in the order ``put`` was called and the writer keeps that
  order per key. When the writer redraws its lanes (a reshard), calls in flight finish first
  and the waiting entries are routed again, in order.
* With a ``LanedWriter`` the producer owns retries: entries a call did not write (failed
  inside the call, not sent, or the whole call failed with a retryable error) go back to the
  head of their lane, and that lane alone backs off (exponential, full jitter) while the other
  lanes go on; a throttled shard does not stall the rest. An entry still failing
  ``RETRY_SECONDS`` after its first call is given up (503); one waits at most
  ``put_timeout_ms``. A plain ``StreamWriter`` retries inside ``put_batch``; its failure
  fails the batch.
* With a ``LoopWriter`` (the embedded log's writer process) there are no sender threads: the
  entries put during one turn of the event loop are submitted together at the end of it, and
  the writer answers on the loop. Its failure fails the batch, as a plain writer's does.
* ``offer(entry)`` queues without waiting (exposures); it returns False instead of raising.
* ``close()`` stops accepting, writes everything still queued, then closes the writer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

from schemas.config import ProducerConfig
from schemas.errors import P13nError, RetryableError, Throttled, Unavailable
from streams.base import Entry, LanedWriter, LoopWriter, StreamWriter, WriteStats, Written

log = logging.getLogger("p13n.producer")

# After a failed write, how long new puts are refused at once (doubles up to the cap).
UNAVAILABLE_BACKOFF = (0.5, 8.0)
# A lane whose entries failed waits uniform(0, min(cap, base * 2**failures)) seconds.
LANE_BACKOFF = (0.05, 1.0)
# An entry that keeps failing is given up (503 to its caller) this long after its first call.
RETRY_SECONDS = 5.0


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
    seq: int = 0  # arrival order, to route again in order after a reshard
    lane: str = ""
    first_call: float = 0.0  # monotonic, when it was first in a call
    deadline: float = 0.0  # loop.time(), when its put stops waiting (_Deadlines)


@dataclass(eq=False, slots=True)
class _Lane:
    queue: deque[_Pending] = field(default_factory=deque)
    size: int = 0  # bytes waiting
    busy: bool = False  # in a call now
    not_before: float = 0.0  # backing off until (monotonic)
    returned: float = 0.0  # when its last call ended (monotonic)
    failures: int = 0


Settled = list[tuple[_Pending, Written | BaseException]]


class _Deadlines:
    """The puts of one event loop still waiting for their write, oldest first, and one timer
    for the oldest of them.

    Every put waits at most the same ``timeout``, so the order puts arrive in is the order
    their deadlines fall in: one timer, set again for the next oldest each time it fires, does
    what a timer per put would (a timer set and cancelled for each of thousands of puts a
    second cost 2.5 µs of the event loop's thread each). Puts already settled leave from the
    head as new ones arrive, so what is held is about what is in flight. On the loop's
    thread only. A producer serving another loop starts a watch of its own; the old one
    still fires for the puts it holds.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        expire: Callable[[_Pending], None],
    ) -> None:
        self.loop = loop
        self._timeout = timeout
        self._expire = expire
        self._waiting: deque[_Pending] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, pending: _Pending) -> None:
        waiting = self._waiting
        while waiting and _settled(waiting[0]):
            waiting.popleft()
        pending.deadline = self.loop.time() + self._timeout
        waiting.append(pending)
        if self._timer is None:
            self._timer = self.loop.call_at(pending.deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        waiting = self._waiting
        now = self.loop.time()
        while waiting:
            head = waiting[0]
            if not _settled(head) and head.deadline > now:
                self._timer = self.loop.call_at(head.deadline, self._fire)
                return
            waiting.popleft()
            if not _settled(head):
                self._expire(head)


def _settled(pending: _Pending) -> bool:
    return pending.future is None or pending.future.done()


class Producer:
    def __init__(
        self,
        writer: StreamWriter | LoopWriter,
        config: ProducerConfig,
        metrics: ProducerMetrics | None = None,
    ) -> None:
        self._writer = writer
        self._laned: LanedWriter | None = writer if isinstance(writer, LanedWriter) else None
        self._loop_writer: LoopWriter | None = writer if isinstance(writer, LoopWriter) else None
        self._turn: list[_Pending] = []  # LoopWriter: this turn's entries, submitted at its end
        self._config = config
        self._metrics = metrics
        self._incoming: deque[_Pending] = deque()
        self._lanes: dict[str, _Lane] = {}
        self._waiting = 0  # entries queued, not in a call
        self._in_flight = 0  # calls
        self._epoch = self._laned.routing_epoch if self._laned is not None else 0
        self._seq = itertools.count()
        # A plain lock under the condition: nothing takes it twice, and it is faster to take
        # than the default re-entrant one (every put takes it).
        self._lock = threading.Condition(threading.Lock())
        self._closing = False
        # The waiting puts of the event loop that last put (see _Deadlines).
        self._deadlines: _Deadlines | None = None
        self._unavailable_until = 0.0
        self._backoff = UNAVAILABLE_BACKOFF[0]
        senders = max(1, config.max_in_flight) if self._laned is not None else 1
        self._threads = [
            threading.Thread(target=self._run, name=f"p13n-producer-{n}", daemon=True)
            for n in range(senders if self._loop_writer is None else 0)
        ]

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_writer is not None:
            self._loop_writer.open()
        if self._laned is not None:
            try:
                self._laned.load_lanes()
            except P13nError as exc:  # the first call loads them; puts may be refused till then
                log.warning("stream lanes not loaded at start: %s", exc.message)
            self._epoch = self._laned.routing_epoch
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        return self._waiting

    async def put(self, entry: Entry) -> Written:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Written] = loop.create_future()
        pending = _Pending(entry, _size(entry), time.monotonic(), loop, future)
        self._enqueue(pending)
        watch = self._deadlines
        if watch is None or watch.loop is not loop:
            watch = self._deadlines = _Deadlines(
                loop, self._config.put_timeout_ms / 1000, self._expire
            )
        watch.add(pending)
        return await future

    def _expire(self, pending: _Pending) -> None:
        """On the event loop (``_Deadlines``): the put waited too long. Withdraw it if still
        queued; an entry already in a call may still be written (at least once), but its caller
        is told to retry."""
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
        """Call it from another thread than the event loop's: with a ``LoopWriter`` it waits
        for the loop to submit what is queued and for the writer's answers."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            if self._loop_writer is not None and not _on_a_loop():
                self._lock.wait_for(lambda: self._waiting == 0, timeout)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._writer.close()

    # -- queueing -----------------------------------------------------------------------------

    def _enqueue(self, pending: _Pending) -> None:
        with self._lock:
            if self._closing:
                reason, message = "closing", "the service is shutting down"
            elif time.monotonic() < self._unavailable_until:
                reason, message = "unavailable", "the stream is unreachable"
            elif self._waiting >= self._config.queue_size:
                reason, message = "queue_full", "too many events waiting for the stream"
            elif self._loop_writer is not None:
                self._turn.append(pending)
                self._waiting += 1  # until the writer answers
                if len(self._turn) == 1:
                    (pending.loop or asyncio.get_running_loop()).call_soon(self._submit)
                return
            else:
                pending.seq = next(self._seq)
                self._incoming.append(pending)
                self._waiting += 1
                if len(self._incoming) == 1:
                    self._lock.notify()
                return
        self._reject(reason)
        raise Unavailable(message, retry_after=1, code="StreamUnavailable")

    def _reject(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejected(reason)

    def _route(self) -> None:
        """Under the lock: move arrivals to their lanes."""
        laned = self._laned
        while self._incoming:
            pending = self._incoming.popleft()
            pending.lane = laned.lane(pending.entry) if laned is not None else ""
            lane = self._lanes.get(pending.lane)
            if lane is None:
                lane = self._lanes[pending.lane] = _Lane()
            lane.queue.append(pending)
            lane.size += pending.size

    def _reroute(self) -> None:
        """Under the lock, nothing in flight: the writer redrew its lanes; route every waiting
        entry again, oldest first."""
        waiting = sorted(
            (p for lane in self._lanes.values() for p in lane.queue), key=lambda p: p.seq
        )
        self._lanes.clear()
        self._incoming.extendleft(reversed(waiting))
        self._route()

    def _take_batch(self) -> tuple[list[_Pending], list[_Lane]] | None:
        """Wait for ready lanes and return one call's entries (and the lanes now busy);
        None once closing and drained."""
        cfg = self._config
        linger = cfg.linger_ms / 1000
        with self._lock:
            while True:
                if self._laned is not None and self._laned.routing_epoch != self._epoch:
                    if self._in_flight:
                        self._lock.wait()  # a call in flight still routes by the old lanes
                        continue
                    self._epoch = self._laned.routing_epoch
                    self._reroute()
                    continue
                self._route()
                if self._laned is not None and self._laned.routing_epoch != self._epoch:
                    continue  # routed with a map newer than the epoch we hold
                if self._closing and self._waiting == 0:
                    self._lock.notify_all()
                    return None
                wake_at: float | None = None
                ready: list[_Lane] = []
                lingering: list[_Lane] = []
                if self._in_flight < cfg.max_in_flight or self._laned is None:
                    now = time.monotonic()
                    for lane in self._lanes.values():
                        if lane.busy or not lane.queue:
                            continue
                        if lane.not_before > now:
                            at = lane.not_before
                        elif (
                            self._closing
                            or len(lane.queue) >= cfg.max_batch_records
                            or lane.size >= cfg.max_batch_bytes
                            or (at := max(lane.queue[0].enqueued, lane.returned) + linger) <= now
                        ):
                            ready.append(lane)
                            continue
                        else:
                            lingering.append(lane)
                        wake_at = at if wake_at is None else min(wake_at, at)
                if ready:
                    # A call goes anyway: lanes still lingering ride along instead of making
                    # calls of their own (a call costs more than a record).
                    return self._fill(ready + lingering)
                if wake_at is None:
                    self._lock.wait()
                else:
                    self._lock.wait(max(0.0, wake_at - time.monotonic()))

    def _fill(self, ready: list[_Lane]) -> tuple[list[_Pending], list[_Lane]]:
        """Under the lock: one call's entries from the ready lanes, oldest lane first."""
        cfg = self._config
        expired_before = time.monotonic() - cfg.put_timeout_ms / 1000
        ready.sort(key=lambda lane: lane.queue[0].seq)
        batch: list[_Pending] = []
        size = 0
        used: list[_Lane] = []
        for lane in ready:
            if len(batch) >= cfg.max_batch_records:
                break
            taken = 0
            while lane.queue and len(batch) < cfg.max_batch_records:
                head = lane.queue[0]
                if batch and size + head.size > cfg.max_batch_bytes:
                    break
                lane.queue.popleft()
                lane.size -= head.size
                self._waiting -= 1
                # Withdrawn (its caller was told to retry), or an offer retried too long.
                if head.cancelled or head.enqueued < expired_before:
                    continue
                batch.append(head)
                size += head.size
                taken += 1
                if not head.first_call:
                    head.first_call = time.monotonic()
            if taken:
                lane.busy = True
                used.append(lane)
        if batch:
            self._in_flight += 1
            if self._in_flight < cfg.max_in_flight:
                self._lock.notify()  # other lanes may be ready for another sender
        return batch, used

    # -- a LoopWriter, on the event loop ----------------------------------------------------

    def _submit(self) -> None:
        """At the end of a loop turn: this turn's entries, one batch to the writer."""
        assert self._loop_writer is not None
        with self._lock:
            turn, self._turn = self._turn, []
            batch = [p for p in turn if not p.cancelled]  # withdrawn: their callers retry
            self._waiting -= len(turn) - len(batch)
        if not batch:
            return
        started = time.monotonic()

        def done(outcome: list[Written] | P13nError, stats: WriteStats) -> None:
            self._answered(batch, outcome, stats, started)

        try:
            self._loop_writer.submit([p.entry for p in batch], done)
        except Exception as exc:  # a writer bug: answer the batch 503, as the senders do
            error = _writer_bug(exc)
            _settle([(p.future, error) for p in batch if p.future is not None])
            self._finished(batch)

    def _answered(
        self,
        batch: list[_Pending],
        outcome: list[Written] | P13nError,
        stats: WriteStats,
        started: float,
    ) -> None:
        if isinstance(outcome, P13nError):
            self._refuse_for_a_while(outcome)
            _settle([(p.future, _client_error(outcome)) for p in batch if p.future is not None])
        else:
            self._backoff = UNAVAILABLE_BACKOFF[0]
            size = sum(p.size for p in batch)
            stats = WriteStats(stats.stream_records, stats.stream_bytes or size, stats.calls)
            self._report(batch, stats, started)
            _settle(
                [(p.future, w) for p, w in zip(batch, outcome, strict=True) if p.future is not None]
            )
        self._finished(batch)

    def _finished(self, batch: list[_Pending]) -> None:
        with self._lock:
            self._waiting -= len(batch)
            if self._closing:
                self._lock.notify_all()

    # -- the sender threads -------------------------------------------------------------------

    def _run(self) -> None:
        while (taken := self._take_batch()) is not None:
            batch, lanes = taken
            if not batch:
                continue
            try:
                if self._laned is not None:
                    self._attempt(self._laned, batch)
                else:
                    self._write(batch)
            finally:
                with self._lock:
                    returned = time.monotonic()
                    for lane in lanes:
                        lane.busy = False
                        lane.returned = returned
                    self._in_flight -= 1
                    self._lock.notify_all()

    def _write(self, batch: list[_Pending]) -> None:
        """A plain writer: it retries inside ``put_batch``; a failure fails the batch."""
        started = time.monotonic()
        try:
            # Sender threads run only without a LoopWriter.
            writer = cast(StreamWriter, self._writer)
            written, stats = writer.put_batch([p.entry for p in batch])
        except P13nError as exc:
            self._refuse_for_a_while(exc)
            _resolve([(p, _client_error(exc)) for p in batch])
            return
        except Exception as exc:  # a writer bug must not kill the thread and strand requests
            error = _writer_bug(exc)
            _resolve([(p, error) for p in batch])
            return
        self._backoff = UNAVAILABLE_BACKOFF[0]
        self._report(batch, stats, started)
        _resolve(list(zip(batch, written, strict=True)))

    def _attempt(self, writer: LanedWriter, batch: list[_Pending]) -> None:
        """A laned writer: one call; what it did not write goes back to its lane."""
        started = time.monotonic()
        try:
            outcomes, stats = writer.attempt([p.entry for p in batch])
        except P13nError as exc:
            self._refuse_for_a_while(exc)
            if isinstance(exc, RetryableError):
                self._requeue(batch, dict.fromkeys({p.lane for p in batch}, exc))
            else:
                _resolve([(p, _client_error(exc)) for p in batch])
            return
        except Exception as exc:  # a writer bug must not kill the thread and strand requests
            error = _writer_bug(exc)
            _resolve([(p, error) for p in batch])
            return
        self._backoff = UNAVAILABLE_BACKOFF[0]
        settled: Settled = []
        again: list[_Pending] = []
        written: list[_Pending] = []
        failed: dict[str, P13nError] = {}  # lane -> why its entries failed
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Written):
                settled.append((pending, outcome))
                written.append(pending)
            elif outcome is None:
                again.append(pending)  # not sent: the call was full
            elif isinstance(outcome, RetryableError):
                again.append(pending)
                failed.setdefault(pending.lane, outcome)
            else:
                settled.append((pending, _client_error(outcome)))
        if written:
            self._report(written, stats, started)
        _resolve(settled)
        if again:
            self._requeue(again, failed)
        if written:
            with self._lock:
                for name in {p.lane for p in written} - failed.keys():
                    if (lane := self._lanes.get(name)) is not None:
                        lane.failures = 0

    def _requeue(self, entries: list[_Pending], failed: dict[str, P13nError]) -> None:
        """Back to the head of their lanes, in order. The ``failed`` lanes back off; entries
        merely not sent (the call was full) go again at once. Entries that have failed for
        ``RETRY_SECONDS`` are given up."""
        for reason in {id(r): r for r in failed.values()}.values():
            log.warning(
                "stream write failed, retrying: %s", reason.message, extra={"code": reason.code}
            )
        now = time.monotonic()
        given_up: Settled = []
        with self._lock:
            by_lane: dict[str, list[_Pending]] = {}
            for pending in entries:
                why = failed.get(pending.lane)
                if why is not None and now - pending.first_call >= RETRY_SECONDS:
                    given_up.append((pending, _client_error(why)))
                    continue
                by_lane.setdefault(pending.lane, []).append(pending)
            for name, items in by_lane.items():
                lane = self._lanes.get(name)
                if lane is None:
                    lane = self._lanes[name] = _Lane()
                lane.queue.extendleft(reversed(items))
                lane.size += sum(p.size for p in items)
                self._waiting += len(items)
            for name in failed:
                if (lane := self._lanes.get(name)) is not None:
                    lane.failures += 1
                    cap = min(LANE_BACKOFF[1], LANE_BACKOFF[0] * 2**lane.failures)
                    lane.not_before = now + random.uniform(0, cap)
            self._lock.notify_all()
        _resolve(given_up)

    def _refuse_for_a_while(self, exc: P13nError) -> None:
        """After a failed call: refuse new puts at once for a while if the stream seems
        unreachable (a throttled call only slows its own entries down)."""
        log.warning("stream write failed: %s", exc.message, extra={"code": exc.code})
        if isinstance(exc, RetryableError) and not isinstance(exc, Throttled):
            with self._lock:
                self._unavailable_until = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, UNAVAILABLE_BACKOFF[1])

    def _report(self, batch: list[_Pending], stats: WriteStats, started: float) -> None:
        if self._metrics is not None:
            self._metrics.batch_written(
                len(batch), sum(p.size for p in batch), stats, time.monotonic() - started
            )


def _client_error(exc: P13nError) -> Unavailable:
    # To the client every write failure is the same: not accepted, retry later.
    return Unavailable(
        f"the stream did not accept the write: {exc.message}",
        code="StreamUnavailable",
        retry_after=exc.retry_after or 1,
    )


def _size(entry: Entry) -> int:
    return len(entry.data) + len(entry.partition_key)


def _writer_bug(exc: Exception) -> Unavailable:
    """Log what the writer raised outside the error tree; what its batch is answered with
    (503). Not a sign that the stream is unreachable: later puts are not refused for it."""
    log.exception("stream writer failed unexpectedly", exc_info=exc)
    return _client_error(Unavailable(f"stream write failed: {type(exc).__name__}"))


def _resolve(settled: Settled) -> None:
    """Settle the waiting futures, one hop per event loop for the whole call."""
    by_loop: dict[
        asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Written], Written | BaseException]]
    ] = {}
    for pending, outcome in settled:
        if pending.loop is not None and pending.future is not None:
            by_loop.setdefault(pending.loop, []).append((pending.future, outcome))

    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, futures)
        except RuntimeError:
            log.warning("an event loop closed before its %d writes were confirmed", len(futures))


def _settle(futures: list[tuple[asyncio.Future[Written], Written | BaseException]]) -> None:
    """On the futures' loop: each its outcome, unless it was settled already (timed out)."""
    for future, outcome in futures:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
