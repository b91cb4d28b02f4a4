"""The stream contracts: what a writer promises, what a reader yields, what a checkpoint means.

A *stream* is a set of shards. Every user record has a partition key; the key's hash key is the
MD5 of its UTF-8 bytes read as a 128-bit big-endian integer, and the record lands on the open
shard whose hash-key range contains it (see ``streams.hashing``). Records of one key therefore
stay on one shard, and a shard keeps them in write order.

Positions are ``(sequence_number, sub_sequence)``. ``sequence_number`` is a decimal string that
increases within a shard (compare with ``int()``); ``sub_sequence`` numbers the user records
packed into one aggregated Kinesis record (0 for records that were not aggregated). A
checkpoint names the last position a consumer has *settled*; reading resumes right after it.

Backends: the embedded SQLite log (``streams.embedded``) and Amazon Kinesis
(``streams.kinesis``), each a ``StreamWriter`` (Kinesis: a ``LanedWriter``) and a
``StreamReader``, built from the config by ``streams.factory`` (the service writes the embedded
log through a process of its own, ``streams.embedded_process``, a ``LoopWriter``); checkpoints
and leases are kept by ``streams.checkpoints`` (SQLite) and ``streams.dynamodb_checkpoints``.

Code above this room uses the protocols and values of this module, ``streams.factory`` (which
builds readers, writers and checkpoint stores from the config), the group-commit
``streams.producer``, the KPL record format (``streams.aggregation``), the group lock
(``streams.checkpoints.GroupLock``) and the one way SQLite files are opened
(``streams.sqlite``); it never opens a stream backend itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from schemas.errors import P13nError, RetryableError


@dataclass(frozen=True, slots=True)
class Entry:
    """One user record to write: opaque bytes routed by ``partition_key``."""

    partition_key: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Written:
    """Where a written entry became durable."""

    shard_id: str
    sequence_number: str


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What one ``put_batch`` cost in the stream: records and bytes as the stream counts them
    (an aggregated Kinesis record counts once), and calls made (including retries)."""

    stream_records: int = 0
    stream_bytes: int = 0
    calls: int = 0


@dataclass(frozen=True, slots=True)
class Shard:
    """A shard and its lineage. ``parent_ids`` are finished before this shard is read
    (a split has one parent, a merge two). ``closed`` shards accept no more writes."""

    shard_id: str
    starting_hash_key: int
    ending_hash_key: int
    parent_ids: tuple[str, ...] = ()
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Position:
    """A point in a shard, after which reading resumes. ``SHARD_END`` marks a closed shard
    read to its end: its children may start."""

    sequence_number: str
    sub_sequence: int = 0

    def key(self) -> tuple[int, int]:
        return (int(self.sequence_number), self.sub_sequence)

    @property
    def shard_end(self) -> bool:
        return self.sequence_number == SHARD_END_MARK


SHARD_END_MARK = "SHARD_END"
SHARD_END = Position(SHARD_END_MARK)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user record read back from a shard, already deaggregated."""

    shard_id: str
    sequence_number: str
    sub_sequence: int
    partition_key: str
    data: bytes
    arrival_ms: int
    # Kinesis: the hash key the record was routed by. After a reshard it may fall outside
    # the shard it was read from; readers must deliver it anyway, never drop it.
    explicit_hash_key: int | None = None

    @property
    def position(self) -> Position:
        return Position(self.sequence_number, self.sub_sequence)


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """One read from a shard cursor.

    ``records`` may be empty while the shard is still open (nothing new yet).
    ``end_of_shard`` is true once a closed shard has been read to its end: the consumer
    finishes it and may then start its children. ``millis_behind_latest`` is the backend's
    estimate of the reader's lag (0 when caught up).
    """

    records: Sequence[UserRecord] = field(default_factory=tuple)
    end_of_shard: bool = False
    millis_behind_latest: int = 0


class StreamWriter(Protocol):
    """Writes batches of user records durably.

    ``put_batch`` returns only once every entry is durable (SQLite transaction committed,
    or PutRecords succeeded for it), with one ``Written`` per entry in entry order. Entries
    with the same partition key keep their relative order in their shard. Failures that a
    later call may fix raise ``schemas.errors.RetryableError`` subclasses (``Unavailable``,
    ``Throttled``); then none, some or all entries may have been written (at least once).
    Implementations are called from one thread at a time.
    """

    def put_batch(self, entries: Sequence[Entry]) -> tuple[list[Written], WriteStats]: ...

    def check(self) -> None:
        """Raise ``Unavailable`` unless the stream can be reached now."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class LoopWriter(Protocol):
    """Writes batches from one asyncio event loop without blocking it.

    ``submit`` hands a batch over and returns at once; ``done`` is called later, on the loop's
    thread, with one ``Written`` per entry in entry order once every entry is durable, or with
    the ``P13nError`` the batch failed with (then none, some or all entries may have been
    written: at least once), and what the batch cost (``WriteStats``). Batches become durable
    in the order they were submitted, so entries with the same partition key keep their order.
    ``open`` gets ready to write (the first ``submit`` does it otherwise); ``close`` is called
    once every submitted batch is done, from any thread.
    """

    def open(self) -> None: ...

    def submit(
        self,
        entries: Sequence[Entry],
        done: Callable[[list[Written] | P13nError, WriteStats], None],
    ) -> None: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class LanedWriter(StreamWriter, Protocol):
    """A ``StreamWriter`` that can take several calls at once, one per *lane*.

    ``lane(entry)`` names the lane an entry belongs to (Kinesis: the shard its key routes to);
    every entry of one partition key is in the same lane for as long as ``routing_epoch``
    stays the same. ``attempt`` may run in several threads at once for entries of *different*
    lanes, never for one lane twice; one lane's entries are given to it in order. It makes one
    call and returns one outcome per entry, in order: ``Written`` (durable), the error that
    entry failed with (``RetryableError`` to send again, any other ``P13nError`` for good), or
    None (not sent this time: send it again). An entry is never sent before an earlier entry
    of its lane that failed or was not sent in the same call. A failed call raises; then any of
    its entries may have been written (at least once).

    When ``routing_epoch`` changes, lanes were redrawn (a reshard): the caller lets every call
    in flight finish before it sends anything routed by the new lanes, so a key that changed
    lanes is never in two calls at once.
    """

    @property
    def routing_epoch(self) -> int: ...

    def lane(self, entry: Entry) -> str: ...

    def load_lanes(self) -> None:
        """Draw the lanes now (Kinesis: ListShards), so the first calls can run in parallel;
        raises ``P13nError`` when the stream cannot be reached (the first call tries again)."""
        ...

    def attempt(
        self, entries: Sequence[Entry]
    ) -> tuple[list[Written | P13nError | None], WriteStats]: ...


class ShardCursor(Protocol):
    """Reads one shard forward from a position. Not thread-safe; one cursor per reader."""

    def read(self, limit: int = 1000) -> ReadBatch: ...

    def close(self) -> None: ...


class StreamReader(Protocol):
    """Lists shards and opens cursors; safe to use from several processes at once."""

    def list_shards(self) -> list[Shard]: ...

    def open(
        self, shard_id: str, after: Position | None = None, *, at_end: bool = False
    ) -> ShardCursor:
        """A cursor that yields the records strictly after ``after``, or from the oldest
        retained record when ``after`` is None — or, with ``at_end``, only records written
        after the cursor was opened (Kinesis' LATEST)."""
        ...

    def close(self) -> None: ...


class CheckpointStore(Protocol):
    """Durable per-(group, shard) positions.

    ``save`` returns once the position is durable. A checkpoint means: every user record
    of this shard up to and including ``position`` has been settled (delivered, or
    dead-lettered) by ``group``; after a restart the group reads from the next record.
    """

    def load(self, group: str, shard_id: str) -> Position | None: ...

    def save(self, group: str, shard_id: str, position: Position) -> None: ...

    def close(self) -> None: ...


class LeaseLost(RetryableError):
    """Another process owns this shard's lease now: stop reading the shard, keep nothing of it."""

    default_code = "LeaseLost"


@runtime_checkable
class LeaseStore(CheckpointStore, Protocol):
    """A ``CheckpointStore`` shared by several processes, which lease shards to one at a time.

    A process reads a shard of a group only while it holds that shard's lease: ``acquire``
    before loading the checkpoint and opening a cursor, ``renew`` well within
    ``lease_seconds`` (a lease not renewed for that long may be taken by another process),
    ``release`` when it stops. ``save`` succeeds only for the lease's owner and raises
    ``LeaseLost`` otherwise, so a process that lost a shard can never move its checkpoint.
    Two owners may briefly deliver the same records around a takeover (at least once); the
    checkpoint never moves backwards.
    """

    lease_seconds: float

    def acquire(self, group: str, shard_id: str) -> bool:
        """Take the lease if it is free, expired or already ours; False if another owns it."""
        ...

    def renew(self, group: str, shard_id: str) -> bool:
        """Extend our lease; False when it is no longer ours."""
        ...

    def release(self, group: str, shard_id: str) -> None:
        """Give the lease up (a no-op when it is not ours)."""
        ...
