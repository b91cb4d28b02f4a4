"""Checkpoint stores: where each consumer group has settled each shard.

``SqliteCheckpointStore`` keeps them in a SQLite file of its own (not the log's file, so
checkpoint writes never wait on the producer's write lock). ``GroupLock`` keeps a second
process from running a group on the same checkpoints (DynamoDB checkpoints lease shards
instead, ``consumers.leases``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import urllib.parse

from schemas.config import Config
from schemas.errors import Unavailable
from streams.base import Position
from streams.sqlite import connect


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqliteCheckpointStore:
    """``CheckpointStore`` in SQLite; ``save`` commits with a full sync before returning."""

    FILE_NAME = "checkpoints.db"

    @classmethod
    def from_config(cls, config: Config, owner: str) -> SqliteCheckpointStore:
        """``<dataDir>/checkpoints.db``; one consuming process, so ``owner`` is not needed."""
        return cls(os.path.join(config.data_dir, cls.FILE_NAME))

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


class GroupLock:
    """Exclusive right to run one consumer group on one data folder's checkpoints.

    An ``flock`` on ``<directory>/<group, quoted>.lock``: the kernel drops it when the process
    exits, however it exits, so a crash never leaves a group locked. The file holds a line
    naming the holder (pid, host, command), so a second runner can say who has it. Two
    ``GroupLock`` objects conflict even within one process (``flock`` is per open file).
    """

    def __init__(self, directory: str, group: str) -> None:
        self.path = os.path.join(directory, urllib.parse.quote(group, safe="") + ".lock")
        self._fd: int | None = None

    def acquire(self, holder: str) -> bool:
        """Take the lock without waiting; False when another runner holds it."""
        if self._fd is not None:
            return True
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ("" when unknown)."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                return file.read().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
