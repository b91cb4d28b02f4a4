"""SQLite files of our own: the one way they are opened.

The embedded log, the SQLite checkpoints and the consumers' own stores (interactions,
experiment metrics) share these settings, so that they behave alike under several readers and
one writer: autocommit (callers issue ``BEGIN`` themselves), WAL, ``synchronous=FULL`` (a
committed transaction is on disk), and a busy timeout instead of an immediate "locked" error.
"""

from __future__ import annotations

import os
import sqlite3

from schemas.errors import Unavailable

BUSY_TIMEOUT_MS = 10_000


def connect(path: str, schema: str | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves), WAL, full sync; the file's
    directory is created when missing, and ``schema`` (a script of ``CREATE … IF NOT
    EXISTS``) run when given. ``Unavailable`` when it cannot be opened or set up."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if schema is not None:
            conn.executescript(schema)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        # Shared by the log, the checkpoints and the stores: the path says which one it is.
        raise Unavailable(f"cannot open {path}: {exc}") from exc
    return conn
