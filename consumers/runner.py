"""The runner: reads every shard for one consumer group and settles each record once.

One ``GroupConsumer`` per target. It walks the stream's shards (a child only after its parents
reached ``SHARD_END``), reads a batch, decodes it, keeps the records of its namespace and kinds,
delivers them, retries what may succeed later, dead-letters what cannot, and then checkpoints
the batch's last position. The batch in hand is always settled before the checkpoint moves, so
after a crash only that batch is delivered again. See ``consumers.base`` for the contract.
When the checkpoint store leases shards (``streams.base.LeaseStore``), only the shards leased to
this process are read (``consumers.leases``). An ``OperatorError`` (credentials missing or
refused, a placeholder in the config) is never settled per record: it leaves ``settle`` and
``run`` unchanged, with the batch unsettled and uncheckpointed, for the supervisor to pause on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from consumers.base import Deferred, Delivery, Target
from consumers.deadletters import DeadLetter, DeadLetterStore
from consumers.leases import ShardLeases
from schemas.codec import INTERACTION, Codec
from schemas.config import ConsumerDefaults, TargetConfig
from schemas.errors import (
    OperatorError,
    P13nError,
    PermanentError,
    RecordError,
    RetryableError,
    Unavailable,
)
from schemas.records import with_partition_key
from streams.base import (
    SHARD_END,
    CheckpointStore,
    LeaseLost,
    LeaseStore,
    Shard,
    ShardCursor,
    StreamReader,
    UserRecord,
)

log = logging.getLogger("p13n.consumer")

SHARD_REFRESH_SECONDS = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter between attempts, bounded two ways."""

    max_attempts: int = 8
    max_record_age_seconds: float = 6 * 3600
    base_delay: float = 0.05
    max_delay: float = 10.0

    @classmethod
    def for_target(cls, target: TargetConfig, defaults: ConsumerDefaults) -> RetryPolicy:
        """The target's own bounds, else the config's ``consumer`` defaults, else ours."""
        return cls(
            max_attempts=target.max_attempts or defaults.max_attempts or cls.max_attempts,
            max_record_age_seconds=target.max_record_age_seconds
            or defaults.max_record_age_seconds
            or cls.max_record_age_seconds,
        )

    def wait(self, retry_state: RetryCallState) -> float:
        """A tenacity wait strategy: full jitter up to the exponential bound, but never sooner
        than a target was told to come back (the ``retry_after`` of a round's errors)."""
        jitter = wait_random_exponential(multiplier=self.base_delay, max=self.max_delay)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        told = error.retry_after if isinstance(error, _StillPending) else 0.0
        return max(float(jitter(retry_state)), min(told, self.max_delay))


class ConsumerMetrics(Protocol):
    def settled(self, group: str, delivered: int, dead_lettered: int, retries: int) -> None: ...

    def lag(self, group: str, shard_id: str, millis_behind: int) -> None: ...


@dataclass(frozen=True)
class Settled:
    """What ``settle_some`` did with a batch. ``unsettled`` are the records it gave back to the
    caller (retryable failures still failing, and everything pending behind them); every other
    record was delivered, dead-lettered or skipped."""

    delivered: int
    dead_lettered: int
    unsettled: tuple[UserRecord, ...] = ()


@dataclass
class _Pending:
    index: int
    delivery: Delivery
    attempts: int = 0
    first_attempt_ms: int = 0
    error: P13nError | None = None


@dataclass
class _Rounds:
    """What the delivery rounds of one batch have left and done so far."""

    pending: list[_Pending]
    delivered: int = 0
    retries: int = 0


class _StillPending(Exception):
    """A round left records pending: tenacity waits, then runs the next round."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"records pending; retry after at least {retry_after}s")
        self.retry_after = retry_after


class GroupConsumer:
    def __init__(
        self,
        group: str,
        namespace: str,
        target: Target,
        reader: StreamReader,
        checkpoints: CheckpointStore,
        dead_letters: DeadLetterStore,
        codec: Codec,
        *,
        kinds: frozenset[str],
        batch_size: int = 500,
        policy: RetryPolicy = RetryPolicy(),
        poll_seconds: float = 0.2,
        metrics: ConsumerMetrics | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.group = group
        self.namespace = namespace
        self.target = target
        self.reader = reader
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.codec = codec
        self.kinds = kinds
        self.batch_size = batch_size
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.clock = clock
        self._cursors: dict[str, ShardCursor] = {}
        self._finished: set[str] = set()
        self._shards: list[Shard] = []
        self._shards_at = -SHARD_REFRESH_SECONDS
        # Shared checkpoints (several processes): read only the shards leased to this one.
        self.leases = (
            ShardLeases(checkpoints, group) if isinstance(checkpoints, LeaseStore) else None
        )

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stop`` is set; the batch in hand is finished and checkpointed first."""
        self.target.open()
        if self.leases is not None:
            self.leases.start()
        try:
            while not self.stop.is_set():
                try:
                    busy = self.poll_once()
                except Interrupted as exc:
                    log.info("consumer %s stopping: %s", self.group, exc)
                    break
                except RetryableError as exc:
                    log.warning("consumer %s: stream read failed: %s", self.group, exc.message)
                    self._drop_cursors()
                    busy = False
                if not busy:
                    self.stop.wait(self.poll_seconds)
        finally:
            self.target.close()
            for cursor in self._cursors.values():
                cursor.close()
            if self.leases is not None:
                self.leases.stop()

    def poll_once(self) -> bool:
        """One batch from every readable shard; True when any shard had records."""
        busy = False
        shards = self._readable_shards()
        if self.leases is not None:
            for shard_id in self.leases.lost():
                self._drop_cursor(shard_id)
            shards = self.leases.held(shards)
        for shard in shards:
            if self.stop.is_set():
                break
            try:
                cursor = self._cursor(shard)
                if cursor is None:
                    continue
                batch = cursor.read(self.batch_size)
                if self.metrics is not None:
                    self.metrics.lag(self.group, shard.shard_id, batch.millis_behind_latest)
                if batch.records:
                    busy = True
                    self.settle(batch.records)
                    last = batch.records[-1]
                    self.checkpoints.save(self.group, shard.shard_id, last.position)
                if batch.end_of_shard:
                    self.checkpoints.save(self.group, shard.shard_id, SHARD_END)
                    self._finish(shard.shard_id)
            except LeaseLost as exc:
                # Another process owns the shard now and goes on from the last checkpoint.
                log.warning("consumer %s: %s", self.group, exc.message)
                self._drop_cursor(shard.shard_id)
                if self.leases is not None:
                    self.leases.drop(shard.shard_id)
        return busy

    def _readable_shards(self) -> list[Shard]:
        now = time.monotonic()
        if now - self._shards_at >= SHARD_REFRESH_SECONDS:
            self._shards = self.reader.list_shards()
            self._shards_at = now
        return [
            s
            for s in self._shards
            if s.shard_id not in self._finished
            and all(p in self._finished or not self._known(p) for p in s.parent_ids)
        ]

    def _known(self, shard_id: str) -> bool:
        """A parent the stream no longer lists (trimmed away) does not block its children."""
        return any(s.shard_id == shard_id for s in self._shards)

    def _cursor(self, shard: Shard) -> ShardCursor | None:
        cursor = self._cursors.get(shard.shard_id)
        if cursor is None:
            position = self.checkpoints.load(self.group, shard.shard_id)
            if position is not None and position.shard_end:
                self._finish(shard.shard_id)
                return None
            cursor = self.reader.open(shard.shard_id, position)
            self._cursors[shard.shard_id] = cursor
        return cursor

    def _finish(self, shard_id: str) -> None:
        self._finished.add(shard_id)
        self._drop_cursor(shard_id)
        if self.leases is not None:
            self.leases.release(shard_id)

    def _drop_cursor(self, shard_id: str) -> None:
        cursor = self._cursors.pop(shard_id, None)
        if cursor is not None:
            cursor.close()

    def _drop_cursors(self) -> None:
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors.clear()
        self._shards_at = -SHARD_REFRESH_SECONDS

    # -- settling one batch -------------------------------------------------------------------

    def settle(self, records: Sequence[UserRecord], *, replay: bool = False) -> tuple[int, int]:
        """Deliver, retry and dead-letter until every record of ``records`` is settled.
        Returns (delivered, dead-lettered)."""
        settled = self._settle(records, replay, None)
        return settled.delivered, settled.dead_lettered

    def settle_some(self, records: Sequence[UserRecord], *, replay: bool = False) -> Settled:
        """Like ``settle``, but a record still failing with a retryable error after
        ``policy.max_attempts`` is given back unsettled instead of dead-lettered (unless older
        than ``max_record_age_seconds``), with every record still pending behind it, for a
        caller that retries them later itself (the Lambda handler's event source mapping)."""
        return self._settle(records, replay, [])

    def _settle(
        self, records: Sequence[UserRecord], replay: bool, left: list[_Pending] | None
    ) -> Settled:
        pending: list[_Pending] = []
        letters: list[DeadLetter] = []
        now_ms = int(self.clock() * 1000)
        for record in records:
            try:
                kind, fields = self.codec.decode(record.data)
                if kind == INTERACTION:
                    with_partition_key(fields, record.partition_key)
            except RecordError as exc:
                letters.append(self._letter(record, None, exc, 0, now_ms))
                continue
            if fields.get("namespace") != self.namespace or kind not in self.kinds:
                continue
            pending.append(_Pending(len(pending), Delivery(record, kind, fields, replay)))
        delivered, retries = self._deliver(pending, letters, left)
        if letters:
            self.dead_letters.put(letters)
            for letter in letters:
                log.warning(
                    "consumer %s: dead-lettered %s: %s",
                    self.group,
                    letter.record_id or letter.sequence_number,
                    letter.message,
                    extra={"code": letter.code, "attempts": letter.attempts},
                )
        if self.metrics is not None:
            self.metrics.settled(self.group, delivered, len(letters), retries)
        unsettled = tuple(item.delivery.record for item in left or ())
        return Settled(delivered, len(letters), unsettled)

    def _deliver(
        self,
        pending: list[_Pending],
        letters: list[DeadLetter],
        left: list[_Pending] | None = None,
    ) -> tuple[int, int]:
        """Settle ``pending``; with ``left`` (a list), records out of attempts but not of age
        go there, and once any does, so does everything still pending (it must not overtake).
        Rounds are run by tenacity: a round that leaves records pending raises ``_StillPending``
        and the next one starts after ``RetryPolicy.wait``."""
        rounds = _Rounds(pending)

        def sleep(seconds: float) -> None:
            # A stop during the wait leaves the pending records unsettled (no checkpoint passes
            # them); they are delivered again after a restart rather than dead-lettered early.
            if self.stop.wait(seconds):
                raise Interrupted(f"{len(rounds.pending)} record(s) left unsettled by shutdown")

        retrying = Retrying(
            retry=retry_if_exception_type(_StillPending),
            wait=self.policy.wait,
            stop=stop_never,  # each record is bounded by itself (_exhausted), not the loop
            sleep=sleep,
            reraise=True,
        )
        retrying(self._round, rounds, letters, left)
        return rounds.delivered, rounds.retries

    def _round(
        self, rounds: _Rounds, letters: list[DeadLetter], left: list[_Pending] | None
    ) -> None:
        """One attempt at every pending record; raises ``_StillPending`` when some remain."""
        now_ms = int(self.clock() * 1000)
        pending = rounds.pending
        for item in pending:
            item.attempts += 1
            item.first_attempt_ms = item.first_attempt_ms or now_ms
        failures = self._attempt([p.delivery for p in pending])
        # Credentials or the config are wrong, not the records: nothing is settled (no
        # attempt counts, nothing is dead-lettered, the checkpoint stays); whoever runs
        # the group pauses it and comes back to this batch once the operator fixed it.
        for failure in failures.values():
            if isinstance(failure, OperatorError):
                raise failure
        # A round where everything was deferred would loop forever: count it then.
        someone_tried = any(not isinstance(e, Deferred) for e in failures.values())
        still: list[_Pending] = []
        for position, item in enumerate(pending):
            error = failures.get(position)
            if error is None:
                rounds.delivered += 1
            elif isinstance(error, Deferred) and someone_tried:
                item.attempts -= 1  # never sent: waiting behind its predecessor
                still.append(item)
            elif isinstance(error, RetryableError) and not self._exhausted(item, now_ms):
                item.error = error
                still.append(item)
            elif (
                left is not None
                and isinstance(error, RetryableError)
                and not self._too_old(item, now_ms)
            ):
                item.error = error
                left.append(item)
            else:
                letters.append(
                    self._letter(
                        item.delivery.record,
                        item.delivery.fields,
                        error,
                        item.attempts,
                        item.first_attempt_ms,
                    )
                )
        rounds.pending = still
        if left:
            left.extend(still)
            left.sort(key=lambda item: item.index)
            return
        if still:
            rounds.retries += len(still)
            # A target that was told when to come back (Retry-After) is not called sooner.
            told = max((p.error.retry_after or 0.0 for p in still if p.error), default=0.0)
            raise _StillPending(told)

    def _attempt(self, batch: list[Delivery]) -> dict[int, P13nError]:
        try:
            return dict(self.target.deliver(batch))
        except P13nError as exc:
            return dict.fromkeys(range(len(batch)), exc)
        except Exception as exc:  # a target bug: retry like an outage, and say so loudly
            log.exception("consumer %s: target raised unexpectedly", self.group)
            error = Unavailable(f"target failed: {type(exc).__name__}")
            return dict.fromkeys(range(len(batch)), error)

    def _exhausted(self, item: _Pending, now_ms: int) -> bool:
        return item.attempts >= self.policy.max_attempts or self._too_old(item, now_ms)

    def _too_old(self, item: _Pending, now_ms: int) -> bool:
        age = now_ms / 1000 - item.delivery.record.arrival_ms / 1000
        return not item.delivery.replay and age > self.policy.max_record_age_seconds

    def _letter(
        self, record: UserRecord, fields: object, error: P13nError, attempts: int, first_ms: int
    ) -> DeadLetter:
        record_id = None
        if isinstance(fields, dict) and isinstance(fields.get("recordId"), bytes):
            record_id = fields["recordId"].hex()
        kind = "permanent" if isinstance(error, PermanentError) else "retryable"
        return DeadLetter(
            letter_id=uuid.uuid4().hex,
            group=self.group,
            record_id=record_id,
            error_type=f"{kind}:{type(error).__name__}",
            code=error.code,
            message=error.message,
            attempts=attempts,
            first_attempt_ms=first_ms,
            last_attempt_ms=int(self.clock() * 1000),
            shard_id=record.shard_id,
            sequence_number=record.sequence_number,
            sub_sequence=record.sub_sequence,
            partition_key=record.partition_key,
            data=record.data,
        )


class Interrupted(Exception):
    """Raised through ``settle`` when the consumer stops mid-retry; nothing is checkpointed."""
