"""Amazon Kinesis as a p13n stream: a shard-aware, aggregating writer and a deaggregating reader.

Writer ordering contract. Pending entries are grouped into *lanes*: the shard their partition
key hashes to (aggregating), or the partition key itself (not aggregating). One PutRecords call
carries at most one Kinesis record per lane, the lane's oldest entries, and a lane's next
record is sent only once the previous one succeeded. Kinesis may fail any entry of a call on
its own while later ones succeed, so this is what keeps entries of one key in order across
partial failures and retries. An entry is durable once PutRecords returned a sequence number
for the Kinesis record carrying it.

Pipelining. The writer is a ``streams.base.LanedWriter``: its lanes for the producer are the
shards of its map, and ``attempt`` (one call, per-entry outcomes, no retries) may run in several
threads at once for different shards; the producer keeps one call per shard and owns the
retries. ``put_batch`` (one caller at a time, retries inside) is the same call in a loop.

Resharding. The writer routes by its copy of ListShards, refreshed every
``shard_refresh_seconds`` and as soon as Kinesis puts a record on a shard other than the one
routed to. Until then an aggregate built for a parent shard lands on one child and may carry
keys of its sibling: readers deliver those (never drop them), and ordering for such a key holds
within each shard, not across the two siblings.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from aws.errors import from_code, translate
from schemas.errors import InvalidRequest, P13nError, PayloadTooLarge, RetryableError, Unavailable
from streams.aggregation import DEFAULT_MAX_BYTES, pack_head, single_size, unpack
from streams.base import Entry, Position, ReadBatch, Shard, UserRecord, WriteStats, Written
from streams.hashing import ShardMap, hash_key

Outcome = Written | P13nError | None

log = logging.getLogger(__name__)

MAX_CALL_RECORDS = 500
MAX_CALL_BYTES = 5 * 1024 * 1024  # data + partition keys of the whole request
MAX_RECORD_BYTES = 1024 * 1024
MAX_KEY_CHARS = 256
MAX_GET_RECORDS = 10_000
_BACKOFF_BASE = 0.05  # the n-th failed round in a row waits up to _BACKOFF_BASE * 2**n s ...
_BACKOFF_CAP = 1.0  # ... and never more than this
_AWS_ERRORS = (ClientError, BotoCoreError)


def list_shards(client: Any, stream_name: str) -> list[Shard]:
    """Every shard of the stream, open and closed, with its lineage (paginated ListShards)."""
    shards: list[Shard] = []
    kwargs: dict[str, Any] = {"StreamName": stream_name}
    try:
        while True:
            page = client.list_shards(**kwargs)
            for item in page.get("Shards", []):
                parents = (item.get("ParentShardId"), item.get("AdjacentParentShardId"))
                shards.append(
                    Shard(
                        shard_id=item["ShardId"],
                        starting_hash_key=int(item["HashKeyRange"]["StartingHashKey"]),
                        ending_hash_key=int(item["HashKeyRange"]["EndingHashKey"]),
                        parent_ids=tuple(p for p in parents if p),
                        closed="EndingSequenceNumber" in item.get("SequenceNumberRange", {}),
                    )
                )
            token = page.get("NextToken")
            if not token or not page.get("Shards"):
                return shards
            kwargs = {"NextToken": token}  # ListShards rejects StreamName with a token
    except _AWS_ERRORS as exc:
        raise translate(exc, f"kinesis ListShards {stream_name}") from exc


@dataclass(slots=True)
class _Slot:
    """One Kinesis record of a PutRecords call and the entries it carries."""

    shard_id: str  # the shard we routed it to
    indices: list[int]
    record: dict[str, Any]
    size: int


class KinesisWriter:
    """``StreamWriter`` over PutRecords; see the module docstring for ordering and durability.

    Failed entries (``ProvisionedThroughputExceededException``, ``InternalFailure``) and failed
    calls (throttling, 5xx, connection errors) are retried, alone, with exponential backoff and
    full jitter until ``deadline_seconds`` after the call began; then the last error is raised
    (``Throttled`` / ``Unavailable``), with some entries possibly written. A single request is
    bounded by the client's own timeouts. Permanent errors are raised at once. Oversized entries
    and bad keys are rejected before anything is written. Entries packed together share their
    aggregate's ``Written`` (shard and sequence number). The client belongs to the caller.
    """

    def __init__(
        self,
        client: Any,
        stream_name: str,
        *,
        aggregate: bool = True,
        deadline_seconds: float = 5.0,
        shard_refresh_seconds: float = 30.0,
    ) -> None:
        self._client = client
        self._stream = stream_name
        self._aggregate = aggregate
        self._deadline = deadline_seconds
        self._refresh = shard_refresh_seconds
        self._map: ShardMap | None = None
        self._map_loaded_at = -math.inf
        self._map_stale = False
        self._map_lock = threading.Lock()
        self._epoch = 0  # counts shard maps that routed differently from the one before

    # -- lanes (see streams.base.LanedWriter) -------------------------------------------------

    @property
    def routing_epoch(self) -> int:
        return self._epoch

    def load_lanes(self) -> None:
        self._shard_map()

    def lane(self, entry: Entry) -> str:
        """The shard ``entry`` is routed to by the current shard map ("" before one is loaded,
        or for a hash key in a gap of a map that is being resharded)."""
        shard_map = self._map
        if shard_map is None:
            return ""
        try:
            return shard_map.shard_for(hash_key(entry.partition_key)).shard_id
        except ValueError:
            return ""

    def attempt(self, entries: Sequence[Entry]) -> tuple[list[Outcome], WriteStats]:
        """One PutRecords call for ``entries``: the head Kinesis record of each lane, oldest lane
        first, within the call's limits. Returns one outcome per entry: ``Written`` once durable,
        the ``P13nError`` that entry failed with (invalid, too large, or failed inside the call),
        or None when it was not part of this call. Entries after a failed or unsent entry of
        their lane are never sent in the same call, so resending the failed and unsent entries
        in order keeps each key's order. A failed call raises (``Throttled`` / ``Unavailable``
        / permanent errors); then any entry of the call may have been written.
        Safe to call from several threads at once for entries of different lanes."""
        outcomes: list[Outcome] = [None] * len(entries)
        valid: list[int] = []
        for index, entry in enumerate(entries):
            problem = self._problem(entry)
            if problem is None:
                valid.append(index)
            else:
                outcomes[index] = problem
        if not valid:
            return outcomes, WriteStats()
        hashes = [hash_key(e.partition_key) for e in entries]
        slots = self._plan(entries, hashes, valid, self._shard_map())
        try:
            response = self._client.put_records(
                StreamName=self._stream, Records=[slot.record for slot in slots]
            )
        except _AWS_ERRORS as exc:
            raise translate(exc, f"kinesis PutRecords {self._stream}") from exc
        records = size = 0
        for slot, result in zip(slots, response["Records"], strict=True):
            if result.get("ErrorCode"):
                failure = from_code(
                    result["ErrorCode"],
                    result.get("ErrorMessage", ""),
                    f"kinesis PutRecords {self._stream}",
                )
                for index in slot.indices:
                    outcomes[index] = failure
                continue
            if result["ShardId"] != slot.shard_id:
                self._map_stale = True  # a reshard we have not seen yet
            where = Written(result["ShardId"], result["SequenceNumber"])
            for index in slot.indices:
                outcomes[index] = where
            records += 1
            size += slot.size
        return outcomes, WriteStats(records, size, 1)

    def put_batch(self, entries: Sequence[Entry]) -> tuple[list[Written], WriteStats]:
        if not entries:
            return [], WriteStats()
        self._validate(entries)
        batch = _Batch(self, entries)
        retrying = Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=_Before(time.monotonic() + self._deadline),
            # tenacity counts the first retry as attempt 1: 2 * BASE * 2**(n-1) == BASE * 2**n
            wait=wait_random_exponential(multiplier=2 * _BACKOFF_BASE, max=_BACKOFF_CAP),
            reraise=True,
        )
        while batch.pending:
            # A fresh run of attempts after each clean round: backoff grows only over failed
            # rounds in a row, while the deadline holds for the whole batch.
            for attempt in retrying:
                with attempt:
                    batch.round()
        return batch.result()

    def check(self) -> None:
        try:
            summary = self._client.describe_stream_summary(StreamName=self._stream)
        except _AWS_ERRORS as exc:
            raise translate(exc, f"kinesis DescribeStreamSummary {self._stream}") from exc
        status = summary["StreamDescriptionSummary"]["StreamStatus"]
        if status not in ("ACTIVE", "UPDATING"):
            raise Unavailable(f"kinesis stream {self._stream} is {status}", code=status)

    def close(self) -> None:
        pass

    def _validate(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            problem = self._problem(entry)
            if problem is not None:
                raise problem

    def _problem(self, entry: Entry) -> P13nError | None:
        if not 1 <= len(entry.partition_key) <= MAX_KEY_CHARS:
            return InvalidRequest(
                f"partition key must be 1-{MAX_KEY_CHARS} characters", code="PartitionKey"
            )
        if self._aggregate:
            too_big = single_size(entry) > DEFAULT_MAX_BYTES
        else:
            too_big = len(entry.data) + len(entry.partition_key.encode()) > MAX_RECORD_BYTES
        if too_big:
            return PayloadTooLarge(
                f"a record of {len(entry.data)} bytes exceeds the Kinesis record limit",
                code="RecordTooLarge",
            )
        return None

    def _shard_map(self) -> ShardMap:
        due = time.monotonic() - self._map_loaded_at >= self._refresh
        if self._map is not None and not self._map_stale and not due:
            return self._map
        # One thread refreshes; the others keep routing by the map they have meanwhile.
        if not self._map_lock.acquire(blocking=self._map is None):
            return self._map  # type: ignore[return-value]
        try:
            return self._refresh_map()
        finally:
            self._map_lock.release()

    def _refresh_map(self) -> ShardMap:
        due = time.monotonic() - self._map_loaded_at >= self._refresh
        if self._map is not None and not self._map_stale and not due:
            return self._map  # another thread refreshed it while this one waited
        try:
            shard_map = ShardMap(list_shards(self._client, self._stream))
        except (RetryableError, ValueError) as exc:
            if self._map is None:
                raise Unavailable(f"kinesis stream {self._stream}: {exc}") from exc
            # Kinesis routes by key whatever our map says; an old map only groups worse.
            log.warning("kinesis %s: keeping the old shard map: %s", self._stream, exc)
            return self._map
        if self._map is None or shard_map.shards != self._map.shards:
            if self._map is not None:
                log.info("kinesis %s: shard map now has %d shards", self._stream, len(shard_map))
            self._epoch += 1
        self._map, self._map_loaded_at, self._map_stale = shard_map, time.monotonic(), False
        return shard_map

    def _plan(
        self, entries: Sequence[Entry], hashes: list[int], pending: list[int], shard_map: ShardMap
    ) -> list[_Slot]:
        """The next call: the head record of every lane, oldest lane first, within limits."""
        try:
            shard_ids = {i: shard_map.shard_for(hashes[i]).shard_id for i in pending}
        except ValueError as exc:  # a gap in ListShards while a reshard settles
            self._map_stale = True
            raise Unavailable(f"kinesis stream {self._stream}: {exc}", code="Resharding") from exc
        lanes: dict[str, list[int]] = {}
        for i in pending:
            lane = shard_ids[i] if self._aggregate else entries[i].partition_key
            lanes.setdefault(lane, []).append(i)
        slots: list[_Slot] = []
        budget = MAX_CALL_BYTES
        for indices in lanes.values():
            if len(slots) == MAX_CALL_RECORDS:
                break
            slot = self._head(entries, indices, shard_ids[indices[0]])
            if slot.size <= budget:
                budget -= slot.size
                slots.append(slot)
        return slots

    def _head(self, entries: Sequence[Entry], indices: list[int], shard_id: str) -> _Slot:
        if not self._aggregate:
            entry = entries[indices[0]]
            size = len(entry.data) + len(entry.partition_key.encode())
            record = {"PartitionKey": entry.partition_key, "Data": entry.data}
            return _Slot(shard_id, indices[:1], record, size)
        aggregate = pack_head([entries[i] for i in indices], DEFAULT_MAX_BYTES)
        record = {
            "PartitionKey": aggregate.partition_key,
            "ExplicitHashKey": aggregate.explicit_hash_key,
            "Data": aggregate.data,
        }
        return _Slot(shard_id, indices[: aggregate.count], record, aggregate.size)


class _Before:
    """tenacity stop: give up when the next wait would end at or after ``deadline``."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        return time.monotonic() + state.upcoming_sleep >= self._deadline


class _Batch:
    """The entries of one ``put_batch`` call and what has become of them."""

    def __init__(self, writer: KinesisWriter, entries: Sequence[Entry]) -> None:
        self._writer = writer
        self._entries = entries
        self._written: list[Written | None] = [None] * len(entries)
        self.pending = list(range(len(entries)))
        self._records = self._size = self._calls = 0

    def round(self) -> None:
        """One call for the pending entries; raises the round's error, a permanent failure
        of an entry before a retryable one. Entries written stay written."""
        self._calls += 1
        outcomes, stats = self._writer.attempt([self._entries[i] for i in self.pending])
        self._records += stats.stream_records
        self._size += stats.stream_bytes
        error: P13nError | None = None
        still: list[int] = []
        for index, outcome in zip(self.pending, outcomes, strict=True):
            if isinstance(outcome, Written):
                self._written[index] = outcome
                continue
            still.append(index)
            if isinstance(outcome, P13nError) and (
                error is None or isinstance(error, RetryableError)
            ):
                error = outcome
        self.pending = still
        if error is not None:
            raise error

    def result(self) -> tuple[list[Written], WriteStats]:
        written = [w for w in self._written if w is not None]
        return written, WriteStats(self._records, self._size, self._calls)


class KinesisReader:
    """``StreamReader`` over ListShards / GetShardIterator / GetRecords. The client belongs
    to the caller."""

    def __init__(self, client: Any, stream_name: str) -> None:
        self._client = client
        self._stream = stream_name

    def list_shards(self) -> list[Shard]:
        return list_shards(self._client, self._stream)

    def open(
        self, shard_id: str, after: Position | None = None, *, at_end: bool = False
    ) -> KinesisCursor:
        cursor = KinesisCursor(self._client, self._stream, shard_id, None if at_end else after)
        if at_end:
            cursor.start_at_end()
        return cursor

    def close(self) -> None:
        pass


class KinesisCursor:
    """``ShardCursor`` yielding deaggregated user records strictly after ``after``.

    Resuming uses AT_SEQUENCE_NUMBER and skips user records at or before ``after``: a
    checkpoint may sit inside an aggregate (any sub-sequence, 0 included), and
    AFTER_SEQUENCE_NUMBER would skip that aggregate's remaining user records. ``limit``
    counts user records; the rest of a fetched aggregate waits in the cursor for the next read.
    Throttling is raised as ``Throttled``; the caller owns backoff.
    """

    def __init__(
        self, client: Any, stream_name: str, shard_id: str, after: Position | None
    ) -> None:
        self._client = client
        self._stream = stream_name
        self._shard_id = shard_id
        self._after = after.key() if after is not None else None
        self._start = after
        self._iterator: str | None = None
        self._opened_at: datetime | None = None  # set when the cursor starts at the end
        self._last_fetched: str | None = None  # sequence number of the last Kinesis record seen
        self._buffer: deque[UserRecord] = deque()
        self._ended = False
        self._millis_behind = 0

    def read(self, limit: int = 1000) -> ReadBatch:
        if not self._buffer and not self._ended:
            self._fetch(max(1, min(limit, MAX_GET_RECORDS)))
        count = min(max(limit, 1), len(self._buffer))
        out = [self._buffer.popleft() for _ in range(count)]
        return ReadBatch(
            records=out,
            end_of_shard=self._ended and not self._buffer,
            millis_behind_latest=self._millis_behind,
        )

    def close(self) -> None:
        self._buffer.clear()

    def start_at_end(self) -> None:
        """Read only records written from now on (LATEST). The iterator is taken now, not at
        the first read, so that records written in between are not skipped."""
        now = datetime.now(UTC)  # to the millisecond, as Kinesis stamps arrivals
        self._opened_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        self._iterator = self._new_iterator(latest=True)

    def _fetch(self, limit: int) -> None:
        try:
            response = self._get_records(limit)
        except P13nError as exc:
            if exc.code != "ExpiredIterator":
                raise
            self._iterator = None  # renew from the last record fetched, and try once more
            response = self._get_records(limit)
        for item in response.get("Records", []):
            self._deaggregate(item)
        self._iterator = response.get("NextShardIterator")
        self._ended = self._iterator is None
        self._millis_behind = int(response.get("MillisBehindLatest") or 0)

    def _get_records(self, limit: int) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._new_iterator()
        try:
            response: dict[str, Any] = self._client.get_records(
                ShardIterator=self._iterator, Limit=limit
            )
        except _AWS_ERRORS as exc:
            where = f"{self._stream}/{self._shard_id}"
            raise translate(exc, f"kinesis GetRecords {where}") from exc
        return response

    def _deaggregate(self, item: dict[str, Any]) -> None:
        sequence = item["SequenceNumber"]
        arrival = item.get("ApproximateArrivalTimestamp")
        arrival_ms = int(arrival.timestamp() * 1000) if arrival is not None else 0
        parts = unpack(item["Data"]) or [(item["PartitionKey"], None, item["Data"])]
        number = int(sequence)
        for sub, (key, explicit, data) in enumerate(parts):
            if self._after is not None and (number, sub) <= self._after:
                continue
            self._buffer.append(
                UserRecord(self._shard_id, sequence, sub, key, data, arrival_ms, explicit)
            )
        self._last_fetched = sequence

    def _new_iterator(self, latest: bool = False) -> str:
        kwargs: dict[str, Any] = {"StreamName": self._stream, "ShardId": self._shard_id}
        if latest:
            kwargs["ShardIteratorType"] = "LATEST"
        elif self._last_fetched is not None:
            kwargs.update(
                ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=self._last_fetched
            )
        elif self._start is not None:
            kwargs.update(
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                StartingSequenceNumber=self._start.sequence_number,
            )
        elif self._opened_at is not None:  # renewing a LATEST iterator that saw nothing yet
            kwargs.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=self._opened_at)
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        try:
            return str(self._client.get_shard_iterator(**kwargs)["ShardIterator"])
        except _AWS_ERRORS as exc:
            raise translate(
                exc, f"kinesis GetShardIterator {self._stream}/{self._shard_id}"
            ) from exc
