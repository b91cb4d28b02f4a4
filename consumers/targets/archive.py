"""``archive``: the stream kept as Avro container files, partitioned for replay.

Layout under ``uri`` (``file://DIR`` or ``s3://BUCKET/PREFIX``; default the data dir's
``archive`` folder)::

    namespace=NS/dt=YYYY-MM-DD/hour=HH/<shardId>-<first sequence number>-<first subsequence>.avro

The date and hour are those of each record's ``receivedAt`` (UTC). A file holds the records of
one namespace, hour and shard, in stream order, as ``p13n.archive.Entry`` envelopes: the shard
position and partition key plus the record's original single-object bytes, so replay delivers
exactly what was written and records of old schema versions stay readable.

Durability and rolling. The runner checkpoints a batch as soon as ``deliver`` returns, so
``deliver`` returns only when the batch is durable: each batch is written at once as a small
*segment* (one Avro file per namespace/hour/shard of the batch) under ``_staging/`` — a
fsync+rename, or one PutObject. A file's segments accumulate (in memory too, as encoded bytes)
until it rolls: before it would pass ``rollBytes`` (a batch larger than that is cut up), once it
has been open ``rollSeconds`` — checked whenever a batch arrives, so an idle stream's last file
waits for the next batch — and at ``close``. Files are therefore large, yet nothing acknowledged
lives only in memory. Replay reads the staging segments of files not rolled yet
(``consumers.replay_sources``), so a record is replayable as soon as it is acknowledged.

Crashes. Segments live in a folder named after their final file, named by their writer (a
random token per target instance) and first record:
``_staging/<final file without .avro>/<token>-<shardId>-<seq>-<sub>.avro``. Rolling writes the
final file, then deletes its segments. A final file is never replaced by less than it holds: if
it exists already (a batch delivered again after a crash can start a file at the same record),
both are merged, each record once. Segments a crashed process left behind are finished the same
way, by the next ``open`` or a later batch, once their folder has had no new segment for
``max(300 s, 2 * rollSeconds)`` — files another process is still assembling are left alone.
Until then those records are durable but not visible to replay. A crash can leave a record
archived twice (its batch is delivered again after a restart), never lose one.

Replayed records (``Delivery.replay``) are not archived again. Storage failures are retryable
for the whole batch.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import fastavro
from fastavro.write import Writer

from consumers.base import Delivery, Failures
from consumers.storage import Storage, StoredFile, open_storage
from consumers.targets import TargetContext
from schemas.codec import EXPOSURE, INTERACTION
from schemas.config import TargetConfig
from schemas.errors import P13nError, RetryableError, Unavailable

log = logging.getLogger("p13n.archive")

STAGING = "_staging"
SUFFIX = ".avro"
DEFAULT_ROLL_SECONDS = 60
DEFAULT_ROLL_BYTES = 64 * 1024 * 1024
MIN_RECOVER_AFTER_SECONDS = 300.0
HOUR_MS = 3_600_000

ENTRY_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Entry",
    "namespace": "p13n.archive",
    "doc": "One stream record as archived: where it was read, and its original bytes.",
    "fields": [
        {"name": "shardId", "type": "string"},
        {"name": "sequenceNumber", "type": "string"},
        {"name": "subSequence", "type": "long"},
        {"name": "partitionKey", "type": "string"},
        {"name": "arrivalMs", "type": "long", "doc": "When the stream accepted the record."},
        {"name": "receivedAtMs", "type": "long", "doc": "The record's receivedAt."},
        {"name": "namespace", "type": "string"},
        {"name": "kind", "type": "string", "doc": "Full name of the record's schema."},
        {"name": "recordId", "type": ["null", "bytes"], "default": None},
        {"name": "data", "type": "bytes", "doc": "The record, Avro single-object encoded."},
    ],
}
PARSED_SCHEMA = fastavro.parse_schema(ENTRY_SCHEMA)


def file_stem(shard_id: str, sequence_number: str, sub_sequence: int) -> str:
    return f"{shard_id}-{sequence_number}-{sub_sequence}"


def parse_stem(stem: str) -> tuple[str, int, int]:
    """``(shard id, sequence number, subsequence)`` of a file name without its suffix (shard
    ids contain dashes, the two numbers don't)."""
    shard_id, sequence, sub = stem.rsplit("-", 2)
    return shard_id, int(sequence), int(sub)


def partition_path(namespace: str, received_ms: int) -> str:
    return _partition(namespace, received_ms // HOUR_MS)


@functools.lru_cache(maxsize=1024)
def _partition(namespace: str, hour: int) -> str:
    return f"namespace={namespace}/" + time.strftime(
        "dt=%Y-%m-%d/hour=%H", time.gmtime(hour * HOUR_MS // 1000)
    )


def entry(delivery: Delivery) -> dict[str, Any]:
    record = delivery.record
    fields = delivery.fields
    return {
        "shardId": record.shard_id,
        "sequenceNumber": record.sequence_number,
        "subSequence": record.sub_sequence,
        "partitionKey": record.partition_key,
        "arrivalMs": record.arrival_ms,
        "receivedAtMs": fields["receivedAt"],
        "namespace": fields["namespace"],
        "kind": delivery.kind,
        "recordId": fields.get("recordId"),
        "data": record.data,
    }


def encode(entries: Iterable[dict[str, Any]], codec: str) -> bytes:
    out = io.BytesIO()
    fastavro.writer(out, PARSED_SCHEMA, entries, codec=codec)
    return out.getvalue()


def join(segments: Iterable[bytes], codec: str) -> bytes:
    """One container file from several, block by block (records are not decoded again)."""
    out = io.BytesIO()
    writer = Writer(out, PARSED_SCHEMA, codec=codec)
    for segment in segments:
        for block in fastavro.block_reader(io.BytesIO(segment)):
            writer.write_block(block)
    writer.flush()
    return out.getvalue()


@dataclass
class _OpenFile:
    """A file being assembled: its final key, and the segments written for it so far."""

    key: str  # final key: partition/stem.avro
    opened_at: float
    segments: dict[str, bytes] = field(default_factory=dict)  # staging key → encoded bytes

    @property
    def staging(self) -> str:
        return f"{STAGING}/{self.key[: -len(SUFFIX)]}"

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.segments.values())


class ArchiveTarget:
    @dataclass(frozen=True)
    class Settings:
        uri: str | None = None  # None: file://<dataDir>/archive
        roll_seconds: float = DEFAULT_ROLL_SECONDS
        roll_bytes: int = DEFAULT_ROLL_BYTES
        codec: str = "deflate"

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> ArchiveTarget.Settings:
            return cls(
                options.get("uri") or None,
                float(options.get("rollSeconds", DEFAULT_ROLL_SECONDS)),
                int(options.get("rollBytes", DEFAULT_ROLL_BYTES)),
                options.get("codec", "deflate"),
            )

    kinds = frozenset({INTERACTION, EXPOSURE})

    def __init__(
        self,
        config: TargetConfig,
        context: TargetContext,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        recover_after: float | None = None,
    ) -> None:
        settings = self.Settings.parse(config.options, config.group)
        self.name = config.name
        self.uri = settings.uri or "file://" + os.path.join(
            os.path.abspath(context.config.data_dir), "archive"
        )
        self.calls_aws = self.uri.startswith("s3://")
        self.roll_seconds = settings.roll_seconds
        self.roll_bytes = settings.roll_bytes
        self.codec = settings.codec
        self._region = config.region
        self._endpoint_url = config.endpoint_url
        self._clock = clock
        self._wall_clock = wall_clock
        self.recover_after = (
            recover_after
            if recover_after is not None
            else max(MIN_RECOVER_AFTER_SECONDS, 2 * self.roll_seconds)
        )
        self._storage: Storage | None = None
        self._open: dict[tuple[str, str], _OpenFile] = {}  # (partition, shard id) → file
        self._recovered_at: float | None = None
        self._token = uuid.uuid4().hex[:12]

    def open(self) -> None:
        self._storage = open_storage(self.uri, region=self._region, endpoint_url=self._endpoint_url)
        self._recover_quietly()

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._storage is None:
            raise Unavailable("archive is not open")
        try:
            now = self._clock()
            if self._recovered_at is None or now - self._recovered_at >= self.roll_seconds:
                self._recover_quietly()
            for key, open_file in list(self._open.items()):
                if now - open_file.opened_at >= self.roll_seconds:
                    self._roll(key, open_file)
            self._deliver([entry(d) for d in batch if not d.replay])
        except RetryableError:
            raise
        except P13nError as exc:  # e.g. a missing bucket: the records are fine, the place isn't
            raise Unavailable(exc.message, code=exc.code) from exc
        return {}

    def _deliver(self, entries: list[dict[str, Any]]) -> None:
        for key, piece in self._pieces(entries):
            data = encode(piece, self.codec)
            open_file = self._open.get(key)
            if open_file is not None and open_file.size + len(data) > self.roll_bytes:
                self._roll(key, open_file)
                open_file = None
            first = piece[0]
            stem = file_stem(first["shardId"], first["sequenceNumber"], first["subSequence"])
            if open_file is None:
                open_file = _OpenFile(f"{key[0]}/{stem}{SUFFIX}", self._clock())
            # Named by this writer too: a process handed the same records again after a crash
            # must not overwrite the segments the crashed one left.
            segment_key = f"{open_file.staging}/{self._token}-{stem}{SUFFIX}"
            self._store.put(segment_key, data)  # durable from here on
            open_file.segments[segment_key] = data
            self._open[key] = open_file
            if open_file.size >= self.roll_bytes:
                self._roll(key, open_file)

    def _pieces(
        self, entries: list[dict[str, Any]]
    ) -> Iterable[tuple[tuple[str, str], list[dict[str, Any]]]]:
        """The batch grouped by (partition, shard), in stream order, cut to at most
        ``rollBytes`` of record bytes each."""
        groups: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
        sizes: dict[tuple[str, str], int] = {}
        for item in entries:
            key = (partition_path(item["namespace"], item["receivedAtMs"]), item["shardId"])
            size = _encoded_size(item)
            pieces = groups.setdefault(key, [[]])
            if pieces[-1] and sizes[key] + size > self.roll_bytes:
                pieces.append([])
                sizes[key] = 0
            pieces[-1].append(item)
            sizes[key] = sizes.get(key, 0) + size
        for key, pieces in groups.items():
            for piece in pieces:
                yield key, piece

    def _roll(self, key: tuple[str, str], open_file: _OpenFile) -> None:
        self._finish(open_file.key, open_file.segments)
        del self._open[key]

    def _finish(self, final: str, segments: dict[str, bytes]) -> None:
        ordered = sorted(segments, key=_segment_order)
        parts = [segments[k] for k in ordered]
        if self._store.exists(final):
            with self._store.open(final) as handle:
                parts.insert(0, handle.read())
            data = encode(_union(parts), self.codec)
        else:
            data = join(parts, self.codec)
        self._store.put(final, data)
        self._store.delete(ordered)

    def _recover_quietly(self) -> None:
        """Leftovers are durable where they are: failing to finish them must not hold up new
        batches. It is tried again ``rollSeconds`` later."""
        try:
            self.recover()
        except Exception as exc:
            log.warning("archive %s: recovery postponed: %s", self.name, exc)

    def recover(self) -> None:
        """Finish the files whose segments were left behind (see the module docstring)."""
        self._recovered_at = self._clock()
        ours = {open_file.staging for open_file in self._open.values()}
        leftovers: dict[str, list[StoredFile]] = {}
        for stored in self._store.files(STAGING + "/"):
            folder, _, name = stored.key.rpartition("/")
            if name.endswith(SUFFIX) and folder not in ours:
                leftovers.setdefault(folder, []).append(stored)
        quiet_since_ms = (self._wall_clock() - self.recover_after) * 1000
        for folder, stored_files in sorted(leftovers.items()):
            if max(f.modified_ms for f in stored_files) > quiet_since_ms:
                continue  # maybe still being written
            segments = {}
            for stored in stored_files:
                with self._store.open(stored.key) as handle:
                    segments[stored.key] = handle.read()
            final = folder[len(STAGING) + 1 :] + SUFFIX
            self._finish(final, segments)
            log.info("archive %s: recovered %s from %d segment(s)", self.name, final, len(segments))

    @property
    def _store(self) -> Storage:
        if self._storage is None:
            raise Unavailable("archive is not open")
        return self._storage

    def close(self) -> None:
        if self._storage is None:
            return
        for key, open_file in list(self._open.items()):
            try:
                self._roll(key, open_file)
            except P13nError as exc:  # the segments stay durable; the next open() finishes
                log.warning("archive %s: could not roll %s: %s", self.name, open_file.key, exc)
        self._open.clear()
        self._storage = None


def _encoded_size(item: dict[str, Any]) -> int:
    """An entry's Avro size, give or take a few bytes: strings and bytes plus their lengths,
    longs at most 10 bytes each (3), the union index of the record id."""
    strings = ("shardId", "sequenceNumber", "partitionKey", "namespace", "kind", "data")
    return sum(len(item[name]) + 2 for name in strings) + 18 + 30 + 1


def _union(files: Iterable[bytes]) -> list[dict[str, Any]]:
    """The entries of several container files, each position once, in stream order."""
    by_position: dict[tuple[int, int], dict[str, Any]] = {}
    for data in files:
        for item in fastavro.reader(io.BytesIO(data)):
            archived = cast(dict[str, Any], item)
            by_position[(int(archived["sequenceNumber"]), archived["subSequence"])] = archived
    return [by_position[position] for position in sorted(by_position)]


def _segment_order(segment_key: str) -> tuple[int, int]:
    _, sequence, sub = parse_stem(segment_key.rpartition("/")[2][: -len(SUFFIX)])
    return sequence, sub
