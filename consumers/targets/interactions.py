"""``interactions``: the embedded recommender's store of who did what, when.

One SQLite file (``<dataDir>/interactions.db``), one row per event, keyed by event id so that
redelivery and replay change nothing (at-least-once delivery becomes exactly-once storage).
The query path reads this table; its columns are the contract between the two.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from consumers.base import Delivery, Failures
from consumers.targets import TargetContext
from schemas.codec import INTERACTION
from schemas.config import TargetConfig
from schemas.errors import Unavailable
from schemas.records import event_id
from streams.embedded import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    event_id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    user_id TEXT,
    session_id TEXT NOT NULL,
    item_id TEXT,
    event_type TEXT NOT NULL,
    event_value REAL,
    ts_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_user ON interactions (namespace, user_id, ts_ms);
CREATE INDEX IF NOT EXISTS interactions_item ON interactions (namespace, item_id, ts_ms);
CREATE INDEX IF NOT EXISTS interactions_session ON interactions (namespace, session_id);
"""


def store_path(data_dir: str) -> str:
    return os.path.join(data_dir, "interactions.db")


class InteractionsTarget:
    kinds = frozenset({INTERACTION})

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        self._path = store_path(context.config.data_dir)
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._conn = connect(self._path)
        self._conn.executescript(SCHEMA)

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._conn is None:
            raise Unavailable("interactions store is not open")
        rows = []
        for delivery in batch:
            record = delivery.fields
            for index, event in enumerate(record["eventList"]):
                rows.append(
                    (
                        event_id(record, index),
                        record["namespace"],
                        record["userId"],
                        record["sessionId"],
                        event["itemId"],
                        event["eventType"],
                        event["eventValue"],
                        event["sentAt"],
                    )
                )
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR IGNORE INTO interactions (event_id, namespace, user_id, session_id,"
                " item_id, event_type, event_value, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise Unavailable(f"interactions store write failed: {exc}") from exc
        return {}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
