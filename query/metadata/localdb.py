"""``localdb``: item metadata in a SQLite file, optionally kept in sync with a copy elsewhere.

The file holds one table, written by ``load_items`` (``p13n items load``)::

    items(namespace TEXT, item_id TEXT, metadata TEXT /* a JSON object */,
          PRIMARY KEY (namespace, item_id))

Where the store reads:

- no ``uri``: ``<dataDir>/items.db`` itself, in WAL mode, so ``p13n items load`` can write while
  the service reads. A missing file or table reads as "no items yet" (every id absent).
- ``uri`` = ``s3://BUCKET/KEY`` or a local path: a private copy under ``<dataDir>/items-sync/``.
  A background thread fetches the source at construction and then checks it every
  ``syncInterval`` seconds (default 300; 0 fetches once and never re-checks): S3 by HeadObject
  ETag, a local file by size and mtime. A new version is downloaded (S3) or backed up with
  SQLite's backup API (local: consistent even while the source is written) into a temporary
  file, checked to hold an ``items`` table, and renamed over the copy — readers never see a half
  file. A failed sync keeps the current copy and logs why. Until the first copy exists, a
  lookup waits up to ``FIRST_SYNC_WAIT`` seconds for it, then raises ``Unavailable``.

Lookups run in a worker thread over a read-only connection opened per call, in chunks of
``CHUNK`` ids (SQLite's limit on bound variables). Failures reading the file raise
``Unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import urllib.parse
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from query.settings import option, read_settings
from schemas.errors import ConfigError, P13nError, Unavailable

if TYPE_CHECKING:
    from query.metadata import MetadataContext

log = logging.getLogger("p13n.metadata")

DEFAULT_FILE = "items.db"
SYNC_FOLDER = "items-sync"
DEFAULT_SYNC_INTERVAL = 300
# SQLite before 3.32 allows 999 bound variables per statement; stay well below.
CHUNK = 500
# Decoded metadata kept in memory per store; past this many ids the cache starts over.
CACHE_ITEMS = 100_000
FIRST_SYNC_WAIT = 5.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    namespace TEXT NOT NULL,
    item_id   TEXT NOT NULL,
    metadata  TEXT NOT NULL,
    PRIMARY KEY (namespace, item_id)
) WITHOUT ROWID;
"""


def default_path(data_dir: str) -> str:
    """The database ``p13n items load`` writes and an un-synced ``localdb`` store reads."""
    return os.path.join(data_dir, DEFAULT_FILE)


def load_items(path: str, namespace: str, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
    """Upsert ``(item_id, metadata)`` rows of ``namespace`` into the database at ``path`` (created
    if missing) in one transaction, and return how many rows were written.

    All or nothing: if iterating ``rows`` raises, nothing is written and the error propagates.
    When it returns, the rows are durable and checkpointed into the main file, so the file alone
    (without ``-wal``) can be copied or uploaded as the source of a synced store. A later row
    with the same id replaces an earlier one.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        count = 0
        try:
            for item_id, metadata in rows:
                conn.execute(
                    "INSERT INTO items (namespace, item_id, metadata) VALUES (?, ?, ?) "
                    "ON CONFLICT (namespace, item_id) DO UPDATE SET metadata = excluded.metadata",
                    (namespace, item_id, json.dumps(metadata, separators=(",", ":"))),
                )
                count += 1
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return count
    except sqlite3.Error as exc:
        raise Unavailable(f"writing items to {path} failed: {exc}", code="ItemStore") from exc
    finally:
        conn.close()


def read_items(path: str, namespace: str, item_ids: Sequence[str]) -> dict[str, Any]:
    """Metadata by id for the ids of ``namespace`` found in the database at ``path`` (blocking)."""
    wanted = list(dict.fromkeys(item_ids))
    if not wanted or not os.path.exists(path):
        return {}
    found: dict[str, Any] = {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise Unavailable(f"opening {path} failed: {exc}", code="ItemStore") from exc
    try:
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT item_id, metadata FROM items WHERE namespace = ? AND item_id IN ({marks})",
                (namespace, *chunk),
            )
            for item_id, metadata in rows:
                found[item_id] = json.loads(metadata)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise Unavailable(f"reading items from {path} failed: {exc}", code="ItemStore") from exc
    except (sqlite3.Error, ValueError) as exc:
        raise Unavailable(f"reading items from {path} failed: {exc}", code="ItemStore") from exc
    finally:
        conn.close()
    return found


@dataclass(frozen=True)
class LocalDbSettings:
    """A ``localdb`` store's own settings (an ``inferenceItemMetadata`` object)."""

    uri: str | None = option("uri", None)  # None: the data dir's own items database
    sync_interval: float = option("syncInterval", DEFAULT_SYNC_INTERVAL)


class LocalDbMetadata:
    """The ``localdb`` item metadata store (see the module docstring)."""

    def __init__(self, settings: Mapping[str, Any], context: MetadataContext) -> None:
        data_dir = context.config.data_dir
        self._cache: dict[tuple[str, str], Any] = {}
        self._cached_version: tuple[int, ...] | None = None
        self._source: _Source | None = None
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        typed = read_settings(LocalDbSettings, settings, "inferenceItemMetadata (localdb)")
        uri = typed.uri
        if uri is None:
            self.path = default_path(data_dir)
            return
        name = hashlib.sha256(uri.encode()).hexdigest()[:16]
        self.path = os.path.join(data_dir, SYNC_FOLDER, f"{name}.db")
        self._source = _source(uri)
        self._interval = typed.sync_interval
        # A copy left by an earlier run serves until the first sync has looked for a newer one.
        if os.path.exists(self.path):
            self._synced.set()
        self._thread = threading.Thread(target=self._sync_loop, name="p13n-items-sync", daemon=True)
        self._thread.start()

    async def lookup(self, namespace: str, item_ids: Sequence[str]) -> Mapping[str, Any]:
        # Decoded metadata is kept in memory for as long as the database file is the same file
        # in the same state (inode, size, mtime of it and its WAL): a load or a sync changes one
        # of them. A lookup whose items are all known then costs two stat calls, not a thread
        # hop, a connection and 25 JSON decodes.
        version = self._version()
        if version != self._cached_version:
            self._cache.clear()
            self._cached_version = version
        missing = [i for i in dict.fromkeys(item_ids) if (namespace, i) not in self._cache]
        if missing:
            found = await asyncio.to_thread(self._lookup, namespace, missing)
            if len(self._cache) + len(missing) > CACHE_ITEMS:
                self._cache.clear()
            for item_id in missing:
                self._cache[(namespace, item_id)] = found.get(item_id)
            if self._cached_version != version:  # changed while we read: keep nothing stale
                self._cache.clear()
            known = self._known(namespace, item_ids)
            known.update(found)
            return known
        return self._known(namespace, item_ids)

    def _known(self, namespace: str, item_ids: Sequence[str]) -> dict[str, Any]:
        cache = self._cache
        return {i: found for i in item_ids if (found := cache.get((namespace, i))) is not None}

    def _version(self) -> tuple[int, ...]:
        parts: list[int] = []
        for path in (self.path, self.path + "-wal"):
            try:
                st = os.stat(path)
            except OSError:
                parts += (0, 0, 0)
            else:
                parts += (st.st_ino, st.st_size, st.st_mtime_ns)
        return tuple(parts)

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)

    def _lookup(self, namespace: str, item_ids: Sequence[str]) -> Mapping[str, Any]:
        if self._source is not None and not self._synced.wait(FIRST_SYNC_WAIT):
            raise Unavailable(
                f"item metadata from {self._source.uri} is not available yet: "
                f"{self._source.last_error or 'first sync still running'}",
                code="ItemStore",
            )
        return read_items(self.path, namespace, item_ids)

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self.sync_now()
            if self._interval <= 0 or self._stop.wait(self._interval):
                return

    def sync_now(self) -> bool:
        """Fetch the source once if it changed; True when a new copy was installed. Never
        raises: a failure keeps the current copy, is logged, and is kept in ``last_error``."""
        source = self._source
        if source is None:
            return False
        try:
            installed = source.refresh(self.path)
        except Exception as exc:  # any failure must leave the running copy serving
            source.last_error = str(exc)
            log.warning(
                "item metadata sync from %s failed, keeping current copy: %s", source.uri, exc
            )
            return False
        source.last_error = None
        if installed:
            self._synced.set()
            log.info("item metadata synced from %s (version %s)", source.uri, source.version)
        return installed


class _Source(ABC):
    """Where a synced store's database comes from; ``refresh`` installs a new version."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.version: str | None = None
        self.last_error: str | None = None

    def refresh(self, target: str) -> bool:
        current = self.current_version()
        if current == self.version and os.path.exists(target):
            return False
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
        try:
            self.fetch(temporary)
            _prepare(temporary)
            os.replace(temporary, target)
        finally:
            for suffix in ("", "-journal", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.remove(temporary + suffix)
        self.version = current
        return True

    @abstractmethod
    def current_version(self) -> str:
        """A token that changes whenever the source's content does (ETag, mtime and size)."""

    @abstractmethod
    def fetch(self, destination: str) -> None:
        """Copy the source's current content to ``destination``."""


class _FileSource(_Source):
    def __init__(self, uri: str, path: str) -> None:
        super().__init__(uri)
        self._path = path

    def current_version(self) -> str:
        parts = []
        for suffix in ("", "-wal"):
            try:
                stat = os.stat(self._path + suffix)
            except FileNotFoundError:
                if not suffix:
                    raise Unavailable(f"{self._path} does not exist", code="ItemStore") from None
                continue
            parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        return "/".join(parts)

    def fetch(self, destination: str) -> None:
        # The backup API copies a consistent snapshot even while a writer is busy.
        source = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True)
        copy = sqlite3.connect(destination)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()


class _S3Source(_Source):
    def __init__(self, uri: str, bucket: str, key: str) -> None:
        super().__init__(uri)
        self._bucket = bucket
        self._key = key
        self._s3: Any = None

    def _client(self) -> Any:
        if self._s3 is None:
            from aws.clients import client

            self._s3 = client("s3", read_timeout=60.0)
        return self._s3

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        from aws.errors import translate

        try:
            return getattr(self._client(), method)(*args, **kwargs)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise translate(exc, f"s3 {what} {self.uri}") from exc

    def current_version(self) -> str:
        head = self._call("HeadObject", "head_object", Bucket=self._bucket, Key=self._key)
        return str(head["ETag"])

    def fetch(self, destination: str) -> None:
        self._call("GetObject", "download_file", self._bucket, self._key, destination)


def _source(uri: str) -> _Source:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise ConfigError(f"inferenceItemMetadata uri {uri}: expected s3://BUCKET/KEY")
        return _S3Source(uri, parsed.netloc, key)
    if parsed.scheme == "file":
        return _FileSource(uri, os.path.abspath(urllib.parse.unquote(parsed.netloc + parsed.path)))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or C:\ on Windows)
        return _FileSource(uri, os.path.abspath(uri))
    raise ConfigError(f"inferenceItemMetadata uri {uri}: use s3://BUCKET/KEY or a file path")


def _prepare(path: str) -> None:
    """Check that ``path`` is an items database and make it a single self-contained file
    (rollback journal), so read-only readers need no ``-wal``/``-shm`` beside the copy."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("SELECT namespace, item_id, metadata FROM items LIMIT 1").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise P13nError(f"not an items database: {exc}", code="ItemStore") from exc
