"""The embedded log: a stream in one SQLite file, for running without AWS.

Shards are fixed at creation: ``shards`` equal hash-key ranges, records routed by the MD5 of
their partition key exactly as Kinesis routes them. Each shard numbers its records 1, 2, 3, …
(``shard_seq`` keeps the last number, so trimming never reuses one). A batch is one
``BEGIN IMMEDIATE`` transaction in WAL mode with ``synchronous=FULL``: when ``put_batch``
returns, the batch is on disk. Several processes may read while one writes; two writers
serialise on SQLite's write lock, so even that stays correct.

Retention: records older than ``retention_hours`` are deleted by the writer now and then.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence

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

BUSY_TIMEOUT_MS = 10_000
TRIM_EVERY_SECONDS = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    idx INTEGER PRIMARY KEY,
    shard_id TEXT NOT NULL UNIQUE,
    start_hash TEXT NOT NULL,
    end_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shard_seq (idx INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    idx INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    data BLOB NOT NULL,
    arrival_ms INTEGER NOT NULL,
    PRIMARY KEY (idx, seq)
) WITHOUT ROWID;
"""


def shard_id(index: int) -> str:
    return f"shardId-{index:012d}"


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves), WAL, full sync."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        raise Unavailable(f"cannot open the embedded stream at {path}: {exc}") from exc
    return conn


def _load_shards(conn: sqlite3.Connection) -> list[Shard]:
    rows = conn.execute("SELECT shard_id, start_hash, end_hash FROM shards ORDER BY idx").fetchall()
    return [Shard(sid, int(start), int(end)) for sid, start, end in rows]


def open_log(path: str, shards: int) -> list[Shard]:
    """Create the log with ``shards`` shards, or check an existing one has that many."""
    conn = connect(path)
    try:
        conn.executescript(_SCHEMA)  # idempotent; executescript commits on its own
        conn.execute("BEGIN IMMEDIATE")
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


class EmbeddedWriter:
    """``StreamWriter`` over the SQLite log (see the module docstring for durability)."""

    def __init__(self, path: str, shards: int = 4, retention_hours: float = 24.0) -> None:
        self._path = path
        self._map = ShardMap(open_log(path, shards))
        self._index = {s.shard_id: i for i, s in enumerate(self._map.shards)}
        self._retention_ms = int(retention_hours * 3600 * 1000)
        self._conn = connect(path)
        self._next_trim = time.monotonic() + TRIM_EVERY_SECONDS

    def put_batch(self, entries: Sequence[Entry]) -> tuple[list[Written], WriteStats]:
        routed = [
            self._index[self._map.shard_for(hash_key(e.partition_key)).shard_id] for e in entries
        ]
        now_ms = int(time.time() * 1000)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                last = dict(self._conn.execute("SELECT idx, last_seq FROM shard_seq").fetchall())
                rows = []
                written = []
                for entry, idx in zip(entries, routed, strict=True):
                    last[idx] += 1
                    rows.append((idx, last[idx], entry.partition_key, entry.data, now_ms))
                    written.append(Written(shard_id(idx), str(last[idx])))
                self._conn.executemany(
                    "INSERT INTO records (idx, seq, partition_key, data, arrival_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                touched = set(routed)
                self._conn.executemany(
                    "UPDATE shard_seq SET last_seq = ? WHERE idx = ?",
                    [(last[idx], idx) for idx in touched],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"embedded stream write failed: {exc}", retry_after=1) from exc
        if time.monotonic() >= self._next_trim:
            self.trim(now_ms)
        size = sum(len(e.data) + len(e.partition_key.encode()) for e in entries)
        return written, WriteStats(stream_records=len(entries), stream_bytes=size, calls=1)

    def trim(self, now_ms: int | None = None) -> int:
        """Delete records older than the retention period; returns how many went."""
        cutoff = (int(time.time() * 1000) if now_ms is None else now_ms) - self._retention_ms
        removed = 0
        try:
            for idx in self._index.values():
                # Sequence order follows arrival order within a shard, so the rows to delete
                # are a prefix; the subquery stops at the first row young enough to keep.
                cursor = self._conn.execute(
                    "DELETE FROM records WHERE idx = ?1 AND seq < coalesce("
                    "(SELECT seq FROM records WHERE idx = ?1 AND arrival_ms >= ?2 ORDER BY seq"
                    " LIMIT 1), (SELECT last_seq + 1 FROM shard_seq WHERE idx = ?1))",
                    (idx, cutoff),
                )
                removed += cursor.rowcount
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
        try:
            rows = self._conn.execute(
                "SELECT seq, partition_key, data, arrival_ms FROM records "
                "WHERE idx = ? AND seq > ? ORDER BY seq LIMIT ?",
                (self._idx, self._after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"embedded stream read failed: {exc}") from exc
        records = [
            UserRecord(self._shard_id, str(seq), 0, pk, bytes(data), arrival)
            for seq, pk, data, arrival in rows
        ]
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
