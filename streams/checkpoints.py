"""Checkpoint stores: where each consumer group has settled each shard.

``SqliteCheckpointStore`` keeps them in a SQLite file of its own (not the log's file, so
checkpoint writes never wait on the producer's write lock).
"""

from __future__ import annotations

import sqlite3
import time

from schemas.errors import Unavailable
from streams.base import Position
from streams.embedded import connect


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqliteCheckpointStore:
    """``CheckpointStore`` in SQLite; ``save`` commits with a full sync before returning."""

    def __init__(self, path: str) -> None:
        self._conn = connect(path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS checkpoints ("
            " grp TEXT NOT NULL, shard_id TEXT NOT NULL, seq TEXT NOT NULL,"
            " sub INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"
            " PRIMARY KEY (grp, shard_id)) WITHOUT ROWID"
        )

    def load(self, group: str, shard_id: str) -> Position | None:
        try:
            row = self._conn.execute(
                "SELECT seq, sub FROM checkpoints WHERE grp = ? AND shard_id = ?",
                (group, shard_id),
            ).fetchone()
        except sqlite3.Error as exc:
            raise Unavailable(f"checkpoint read failed: {exc}") from exc
        return Position(row[0], row[1]) if row else None

    def save(self, group: str, shard_id: str, position: Position) -> None:
        try:
            self._conn.execute(
                "INSERT INTO checkpoints (grp, shard_id, seq, sub, updated_ms)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (grp, shard_id) DO UPDATE SET"
                " seq = excluded.seq, sub = excluded.sub, updated_ms = excluded.updated_ms",
                (group, shard_id, position.sequence_number, position.sub_sequence, _now_ms()),
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"checkpoint write failed: {exc}") from exc

    def close(self) -> None:
        self._conn.close()
