"""The interactions table: the contract between the ``interactions`` target, which writes it,
and the embedded recommender (``query.local``), which reads it.

One SQLite file (``<dataDir>/interactions.db``), one row per event, keyed by event id so that
redelivery and replay change nothing (at-least-once delivery becomes exactly-once storage).
Readers use the columns by name; the indexes below are the ones their queries rely on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from schemas.records import event_id

FILE_NAME = "interactions.db"
TABLE = "interactions"


class Row(NamedTuple):
    """One stored event; the field names are the table's columns, in order."""

    event_id: str
    namespace: str
    user_id: str | None
    session_id: str
    item_id: str | None
    event_type: str
    event_value: float | None
    ts_ms: int  # the event's sentAt, epoch milliseconds


COLUMNS = Row._fields

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    event_id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    user_id TEXT,
    session_id TEXT NOT NULL,
    item_id TEXT,
    event_type TEXT NOT NULL,
    event_value REAL,
    ts_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_user ON {TABLE} (namespace, user_id, ts_ms);
CREATE INDEX IF NOT EXISTS interactions_item ON {TABLE} (namespace, item_id, ts_ms);
CREATE INDEX IF NOT EXISTS interactions_session ON {TABLE} (namespace, session_id);
"""

# Idempotent by event id: a row already stored is left as it is.
INSERT = (
    f"INSERT OR IGNORE INTO {TABLE} ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in COLUMNS)})"
)


def store_path(data_dir: str) -> str:
    return os.path.join(data_dir, FILE_NAME)


def rows(record: Mapping[str, Any]) -> Iterator[Row]:
    """The rows of one interaction record (decoded fields): one per event."""
    for index, event in enumerate(record["eventList"]):
        yield Row(
            event_id(record, index),
            record["namespace"],
            record["userId"],
            record["sessionId"],
            event["itemId"],
            event["eventType"],
            event["eventValue"],
            event["sentAt"],
        )
