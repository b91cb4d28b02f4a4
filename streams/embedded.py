"""The embedded log: a stream in one SQLite file, for running without AWS.

Shards are fixed at creation: ``shards`` equal hash-key ranges, records routed by the MD5 of
their partition key exactly as Kinesis routes them. Each shard numbers its records 1, 2, 3, …
(``shard_seq`` keeps the last number, so trimming never reuses one; a trigger maintains it).

A batch is stored as one *chunk* per shard it touches: a row holding the shard's records of the
batch, numbered ``first_seq`` to ``last_seq`` in order, as one MessagePack array of
``[partition_key, data]`` pairs, with the batch's arrival time. Readers unpack chunks and skip
the records at or before their position, so a position may fall inside a chunk. Why chunks and
not a row per record: inserting a row cost SQLite ~5 µs per record (B-tree, triggers), which
lengthened every commit the waiting requests sit through; a chunk costs about as much as a
row, and a batch of 50 records on 4 shards is 4 rows. Measured with the service's app side by
side with and without chunks (POST /events, 50 clients): 34% → 38% and 37% → 42% of the bare
endpoint in two runs, 0.165 → 0.142 ms of server CPU per event in the first.

All the chunks of a batch are one multi-row ``INSERT`` — one statement, so one atomic
transaction (a batch touching more than ``_INSERT_ROWS`` shards is one such statement per
1,000 chunks inside one explicit transaction). WAL mode with ``synchronous=FULL``: when
``put_batch`` returns, the batch is on disk. Several processes may read while one writes. A
writer numbers records from the last numbers it knows; two writers serialise on SQLite's write
lock, and one whose numbers are not above the shard's last (another writer went first; a
trigger refuses the statement and the whole batch is rolled back, even when the records that
took those numbers have since been trimmed) reads the last numbers again and retries, so even
that stays correct: a number is never used twice, and never below one a reader has passed.

Why one statement: the sqlite3 module lets go of the GIL around every step (every statement,
every row of an ``executemany``), and each time the writer thread takes it back it may wait
for the event loop's thread to yield it, up to the 5 ms switch interval. With a transaction of
several statements a batch's round trip under load was 10 ms, most of it such waits. (The
service no longer writes from a thread: ``streams.embedded_process`` runs this writer in a
process of its own, for the same reason.)

Retention: chunks older than ``retention_hours`` are deleted by the writer now and then.

A log written before chunks (a row per record in a ``records`` table) is converted when it is
opened, in one transaction: each old record becomes a chunk of one, numbers unchanged.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from schemas.errors import ConfigError, Unavailable
from streams.base import (
    Entry,
    Position,
    ReadBatch,
    Shard,
    UserRecord,
    WriteStats,
    Written,
)
from streams.hashing import ShardMap, equal_ranges, hash_key
from streams.sqlite import connect

TRIM_EVERY_SECONDS = 60.0
ROUTE_MEMO_SIZE = 65_536

_TABLES = (
    """CREATE TABLE IF NOT EXISTS shards (
    idx INTEGER PRIMARY KEY,
    shard_id TEXT NOT NULL UNIQUE,
    start_hash TEXT NOT NULL,
    end_hash TEXT NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS shard_seq (idx INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS chunks (
    idx INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    arrival_ms INTEGER NOT NULL,
    records BLOB NOT NULL,
    PRIMARY KEY (idx, last_seq)
) WITHOUT ROWID""",
)
# Created after a conversion from the old format (whose numbers are already in shard_seq).
_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS chunks_fresh_seq BEFORE INSERT ON chunks
WHEN NEW.first_seq <= (SELECT last_seq FROM shard_seq WHERE idx = NEW.idx) BEGIN
    SELECT RAISE(ABORT, 'sequence number already used');
END""",
    """CREATE TRIGGER IF NOT EXISTS chunks_last_seq AFTER INSERT ON chunks BEGIN
    UPDATE shard_seq SET last_seq = NEW.last_seq WHERE idx = NEW.idx AND last_seq < NEW.last_seq;
END""",
)

# Chunks per INSERT statement: 5 parameters each, well under SQLite's 32,766 variables. A batch
# touching more shards is several statements in one explicit transaction.
_INSERT_ROWS = 1000
# Attempts when another writer took the sequence numbers this one meant to use.
_NUMBERING_ATTEMPTS = 5
# Old-format rows converted per step when a log from before chunks is opened.
_CONVERT_ROWS = 1000

_encode_chunk = msgspec.msgpack.Encoder().encode
_decode_chunk = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode


@functools.lru_cache(maxsize=64)
def _insert(rows: int) -> str:
    return "INSERT INTO chunks (idx, last_seq, first_seq, arrival_ms, records) VALUES " + ",".join(
        ["(?,?,?,?,?)"] * rows
    )


def shard_id(index: int) -> str:
    return f"shardId-{index:012d}"


def _load_shards(conn: sqlite3.Connection) -> list[Shard]:
    rows = conn.execute("SELECT shard_id, start_hash, end_hash FROM shards ORDER BY idx").fetchall()
    return [Shard(sid, int(start), int(end)) for sid, start, end in rows]


def open_log(path: str, shards: int) -> list[Shard]:
    """Create the log with ``shards`` shards, or check an existing one has that many (and
    convert it to chunks if it was written before them)."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _TABLES:
            conn.execute(statement)
        _convert_rows(conn)
        for statement in _TRIGGERS:
            conn.execute(statement)
        existing = _load_shards(conn)
        if not existing:
            for index, (start, end) in enumerate(equal_ranges(shards)):
                conn.execute(
                    "INSERT INTO shards (idx, shard_id, start_hash, end_hash) VALUES (?, ?, ?, ?)",
                    (index, shard_id(index), str(start), str(end)),
                )
                conn.execute("INSERT INTO shard_seq (idx, last_seq) VALUES (?, 0)", (index,))
            existing = _load_shards(conn)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise Unavailable(f"cannot initialise the embedded stream at {path}: {exc}") from exc
    finally:
        conn.close()
    if len(existing) != shards:
        raise ConfigError(
            f"the embedded stream at {path} has {len(existing)} shards but the config asks "
            f"for {shards}; use another path or remove the old log"
        )
    return existing


def _convert_rows(conn: sqlite3.Connection) -> None:
    """Inside open_log's transaction: move a ``records`` table of the format before chunks
    (one row per record) into chunks of one record each, then drop it with its triggers."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
    ).fetchone():
        return
    rows = conn.execute(
        "SELECT idx, seq, partition_key, data, arrival_ms FROM records ORDER BY idx, seq"
    )
    while batch := rows.fetchmany(_CONVERT_ROWS):
        conn.executemany(
            "INSERT INTO chunks (idx, last_seq, first_seq, arrival_ms, records) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (idx, seq, seq, arrival, _encode_chunk([(key, bytes(data))]))
                for idx, seq, key, data, arrival in batch
            ],
        )
    conn.execute("DROP TABLE records")


class EmbeddedWriter:
    """``StreamWriter`` over the SQLite log (see the module docstring for durability)."""

    def __init__(self, path: str, shards: int = 4, retention_hours: float = 24.0) -> None:
        self._path = path
        self._map = ShardMap(open_log(path, shards))
        self._index = {s.shard_id: i for i, s in enumerate(self._map.shards)}
        self._shard_ids = [s.shard_id for s in self._map.shards]  # by index
        self._retention_ms = int(retention_hours * 3600 * 1000)
        self._conn = connect(path)
        self._next_trim = time.monotonic() + TRIM_EVERY_SECONDS
        # Shard index by partition key: a session's events keep coming, and the MD5 and the
        # range search cost more than the rest of writing a record. Bounded; emptied when full.
        self._routes: dict[str, int] = {}
        # The last sequence number of each shard as this writer knows it; None: read it.
        self._last: list[int] | None = None

    @property
    def shard_ids(self) -> list[str]:
        """The log's shard ids, by shard index."""
        return list(self._shard_ids)

    def _insert(self, rows: list[Any]) -> None:
        """Insert flattened rows (5 values each): one statement when they fit in one."""
        size = _INSERT_ROWS * 5
        if len(rows) <= size:
            self._conn.execute(_insert(len(rows) // 5), rows)
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                self._conn.execute(_insert(len(chunk) // 5), chunk)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _shard_index(self, partition_key: str) -> int:
        index = self._routes.get(partition_key)
        if index is None:
            if len(self._routes) >= ROUTE_MEMO_SIZE:
                self._routes.clear()
            index = self._index[self._map.shard_for(hash_key(partition_key)).shard_id]
            self._routes[partition_key] = index
        return index

    def _last_numbers(self) -> list[int]:
        rows = self._conn.execute("SELECT idx, last_seq FROM shard_seq").fetchall()
        last = [0] * len(self._index)
        for idx, seq in rows:
            last[idx] = seq
        return last

    def put_batch(self, entries: Sequence[Entry]) -> tuple[list[Written], WriteStats]:
        routed = [self._shard_index(e.partition_key) for e in entries]
        # Each shard's records of the batch, in the batch's order: one chunk each.
        by_shard: dict[int, list[tuple[str, bytes]]] = {}
        for entry, idx in zip(entries, routed, strict=True):
            by_shard.setdefault(idx, []).append((entry.partition_key, entry.data))
        chunks = [(idx, len(records), _encode_chunk(records)) for idx, records in by_shard.items()]
        now_ms = int(time.time() * 1000)
        try:
            for attempt in range(_NUMBERING_ATTEMPTS):
                if self._last is None:
                    self._last = self._last_numbers()
                before = self._last
                last = list(before)
                rows: list[Any] = []
                for idx, count, blob in chunks:
                    rows += (idx, last[idx] + count, last[idx] + 1, now_ms, blob)
                    last[idx] += count
                try:
                    self._insert(rows)
                except sqlite3.IntegrityError:
                    if attempt == _NUMBERING_ATTEMPTS - 1:
                        raise
                    self._last = None  # another writer numbered records: read where it got
                    continue
                break
        except sqlite3.Error as exc:
            self._last = None
            raise Unavailable(f"embedded stream write failed: {exc}", retry_after=1) from exc
        self._last = last
        # Numbers in batch order: each shard's run starts right after what it had before.
        following = [number + 1 for number in before]
        ids = self._shard_ids
        written = []
        for idx in routed:
            written.append(Written(ids[idx], str(following[idx])))
            following[idx] += 1
        if time.monotonic() >= self._next_trim:
            self.trim(now_ms)
        size = sum(len(e.data) + len(e.partition_key.encode()) for e in entries)
        return written, WriteStats(stream_records=len(entries), stream_bytes=size, calls=1)

    def trim(self, now_ms: int | None = None) -> int:
        """Delete chunks older than the retention period; returns how many records went."""
        cutoff = (int(time.time() * 1000) if now_ms is None else now_ms) - self._retention_ms
        removed = 0
        try:
            for idx in self._index.values():
                # Numbers follow arrival order within a shard, so the chunks to delete are a
                # prefix; the subquery stops at the first chunk young enough to keep.
                gone = self._conn.execute(
                    "DELETE FROM chunks WHERE idx = ?1 AND last_seq < coalesce("
                    "(SELECT last_seq FROM chunks WHERE idx = ?1 AND arrival_ms >= ?2"
                    " ORDER BY last_seq LIMIT 1), (SELECT last_seq + 1 FROM shard_seq"
                    " WHERE idx = ?1)) RETURNING last_seq - first_seq + 1",
                    (idx, cutoff),
                ).fetchall()
                removed += sum(count for (count,) in gone)
        except sqlite3.Error as exc:
            raise Unavailable(f"embedded stream trim failed: {exc}") from exc
        self._next_trim = time.monotonic() + TRIM_EVERY_SECONDS
        return removed

    def check(self) -> None:
        try:
            self._conn.execute("SELECT 1 FROM shards LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"embedded stream unreachable: {exc}") from exc

    def close(self) -> None:
        self._conn.close()


class EmbeddedCursor:
    def __init__(
        self, conn: sqlite3.Connection, sid: str, idx: int, after: Position | None
    ) -> None:
        self._conn = conn
        self._shard_id = sid
        self._idx = idx
        self._after = int(after.sequence_number) if after is not None else 0

    def read(self, limit: int = 1000) -> ReadBatch:
        records: list[UserRecord] = []
        try:
            # Chunks are read lazily, only as many as ``limit`` records need.
            rows = self._conn.execute(
                "SELECT first_seq, arrival_ms, records FROM chunks "
                "WHERE idx = ? AND last_seq > ? ORDER BY last_seq",
                (self._idx, self._after),
            )
            try:
                for first, arrival, blob in rows:
                    unpacked = _decode_chunk(blob)
                    skip = max(0, self._after - first + 1)  # read before, up to the position
                    for offset in range(skip, min(len(unpacked), skip + limit - len(records))):
                        key, data = unpacked[offset]
                        records.append(
                            UserRecord(self._shard_id, str(first + offset), 0, key, data, arrival)
                        )
                    if len(records) >= limit:
                        break
            finally:
                rows.close()
        except (sqlite3.Error, msgspec.DecodeError) as exc:
            raise Unavailable(f"embedded stream read failed: {exc}") from exc
        behind = 0
        if records:
            self._after = int(records[-1].sequence_number)
            if len(records) == limit:
                behind = max(0, int(time.time() * 1000) - records[-1].arrival_ms)
        return ReadBatch(records=records, end_of_shard=False, millis_behind_latest=behind)

    def close(self) -> None:
        """Cursors share their reader's connection; nothing to release."""


class EmbeddedReader:
    """``StreamReader`` over the SQLite log; any number may run beside the writer."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise Unavailable(f"no embedded stream at {path} (start `p13n serve` first)")
        self._conn = connect(path)

    def list_shards(self) -> list[Shard]:
        try:
            return _load_shards(self._conn)
        except sqlite3.Error as exc:
            raise Unavailable(f"embedded stream unreachable: {exc}") from exc

    def open(
        self, shard_id: str, after: Position | None = None, *, at_end: bool = False
    ) -> EmbeddedCursor:
        index = {s.shard_id: i for i, s in enumerate(self.list_shards())}
        if shard_id not in index:
            raise ConfigError(f"no shard {shard_id} in the embedded stream")
        if at_end:
            (last,) = self._conn.execute(
                "SELECT last_seq FROM shard_seq WHERE idx = ?", (index[shard_id],)
            ).fetchone()
            after = Position(str(last))
        return EmbeddedCursor(self._conn, shard_id, index[shard_id], after)

    def close(self) -> None:
        self._conn.close()
