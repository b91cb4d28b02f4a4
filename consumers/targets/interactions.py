"""``interactions``: the embedded recommender's store of who did what, when.

Writes the table of ``schemas.interactions`` (its file, columns and row shape are the contract
with the query path), one row per event, idempotent by event id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from consumers.base import Delivery, Failures
from consumers.targets import TargetContext
from schemas.codec import INTERACTION
from schemas.config import TargetConfig
from schemas.errors import Unavailable
from schemas.interactions import INSERT, SCHEMA, rows, store_path
from streams.sqlite import connect


class InteractionsTarget:
    kinds = frozenset({INTERACTION})

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        self._path = store_path(context.config.data_dir)
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._conn = connect(self._path, SCHEMA)

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._conn is None:
            raise Unavailable("interactions store is not open")
        stored = [row for delivery in batch for row in rows(delivery.fields)]
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(INSERT, stored)
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
