"""What ``p13n replay`` reads: our archive, or the sample project's Firehose output.

``open_source(uri)`` looks at the location (``file://DIR``, a plain path, or
``s3://BUCKET/PREFIX``) and picks the reader:

* **archive** — the root holds ``namespace=NS`` folders (``consumers.targets.archive``). Whole
  partitions outside the namespace and time window are skipped before any file is opened.
  Files not rolled yet are read from their durable staging segments, so a replay sees every
  record the archive target has acknowledged (and so checkpointed), however recently. A record
  found twice — in a segment and in the file it has just been rolled into, or archived twice
  after a crash — is yielded once.
* **Firehose** — anything else: every file under the root is the sample project's Firehose
  output, JSON objects ``{"namespace", "path", "headers", "queryStringParameters", "body"}``
  concatenated back to back or one per line, gzip-compressed or not (told apart per file).
  Each object becomes an interactions record, encoded with the ``Codec`` exactly as ingest
  would: its record id is derived from the file key and the object's index (a resumed replay
  makes the same ids), ``receivedAt`` is its latest event ``sentAt`` (else the file's time),
  ``sentAt`` seconds become milliseconds, a ``properties`` object becomes JSON text. An object
  that cannot be converted is yielded with ``problem`` set and its original bytes.

Order: items come in time order (``receivedAt``) across files, and in their own order within a
file. Archive files of one namespace and shard are read in stream (sequence) order, so one
partition key's records keep the order they were written in. A file is opened only when the
merge reaches the earliest time it can hold (its hour; a Firehose file's time less an hour), so
only files that overlap in time are open together.

Every item has a stable ``position`` (file key and index in the file); ``skip`` maps file keys
to how many leading items of that file to pass over, which is how a resumed replay continues.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import heapq
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import IO, Any, Protocol, TypeVar

import fastavro

from consumers.storage import FileStorage, Storage, StoredFile, open_storage
from consumers.targets.archive import STAGING, SUFFIX, parse_stem
from schemas.codec import INTERACTION, Codec
from schemas.errors import P13nError, RecordError
from schemas.records import request_context
from streams.base import UserRecord

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# A Firehose file holds records that arrived within its buffer interval (at most 15 minutes)
# of its time; events' sentAt precede arrival. Opening a file an hour early keeps the merge in
# time order except for events sent more than an hour before they arrived.
FIREHOSE_LEAD_MS = HOUR_MS
_FIREHOSE_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})")
_GZIP_MAGIC = b"\x1f\x8b"
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class SourceItem:
    file: str  # the file's key under the source root
    index: int  # 0-based position in the file
    record: UserRecord  # what the runner settles: data is the single-object encoded record
    received_ms: int
    namespace: str | None
    kind: str | None
    fields: Mapping[str, Any] | None = None  # already decoded (Firehose items)
    problem: str | None = None  # why the original bytes (in record.data) could not be used

    @property
    def position(self) -> str:
        return f"{self.file}#{self.index}"


class Source(Protocol):
    uri: str
    kind: str  # "archive" or "firehose"
    skipped: int  # items passed over because ``skip`` said so

    def items(
        self,
        *,
        namespace: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        skip: Mapping[str, int] | None = None,
    ) -> Iterator[SourceItem]: ...


def open_source(
    uri: str,
    codec: Codec,
    *,
    partition_key: str = "sessionId",
    region: str | None = None,
    endpoint_url: str | None = None,
) -> Source:
    storage = open_storage(uri, region=region, endpoint_url=endpoint_url)
    if isinstance(storage, FileStorage) and os.path.isfile(storage.root):
        return FirehoseSource(storage, codec, partition_key)
    folders = storage.folders()
    # An archive whose files have not rolled yet holds only its staging folder.
    if STAGING in folders:
        folders += storage.folders(STAGING)
    if any(name.startswith("namespace=") for name in folders):
        return ArchiveSource(storage)
    return FirehoseSource(storage, codec, partition_key)


# -- merging ----------------------------------------------------------------------------------

T = TypeVar("T")
K = TypeVar("K")


def lazy_merge(
    sources: Iterable[tuple[K, Callable[[], Iterator[T]]]], key: Callable[[T], K]
) -> Iterator[T]:
    """Merge iterators by ``key``, each keeping its own order. A source is ``(bound, open)``:
    every item it yields has a key of at least ``bound``, and it is opened only once the merge
    has reached that bound. Ties go to the source listed first, so the order is repeatable."""
    pending = sorted(enumerate(sources), key=lambda s: (s[1][0], s[0]))
    heap: list[tuple[Any, int, T, Iterator[T]]] = []
    opened = 0
    while True:
        while opened < len(pending) and (not heap or pending[opened][1][0] <= heap[0][0]):
            index, (_, start) = pending[opened]
            opened += 1
            iterator = start()
            for first in iterator:
                heapq.heappush(heap, (key(first), index, first, iterator))
                break
        if not heap:
            return
        _, index, item, iterator = heap[0]
        yield item
        for following in iterator:
            heapq.heapreplace(heap, (key(following), index, following, iterator))
            break
        else:
            heapq.heappop(heap)


# -- our archive ------------------------------------------------------------------------------


def _hour_ms(dt_folder: str, hour_folder: str) -> int:
    day = datetime.strptime(dt_folder[len("dt=") :], "%Y-%m-%d").replace(tzinfo=UTC)
    return calendar.timegm(day.timetuple()) * 1000 + int(hour_folder[len("hour=") :]) * HOUR_MS


def _overlaps(first_ms: int, length_ms: int, start_ms: int | None, end_ms: int | None) -> bool:
    return (end_ms is None or first_ms < end_ms) and (
        start_ms is None or first_ms + length_ms > start_ms
    )


@dataclass(frozen=True, slots=True)
class _ArchiveFile:
    key: str
    hour_ms: int
    shard_id: str
    first: tuple[int, int]  # (sequence number, subsequence) of its first record
    # A staging segment: the final file it is being rolled into (read instead, from ``first``
    # on, when the segment is gone by the time it is opened: it was rolled meanwhile).
    rolls_into: str | None = None


def _segment(prefix: str, stored: StoredFile, hour_ms: int) -> _ArchiveFile | None:
    """A staging segment ``_staging/<partition>/<final stem>/<writer>-<stem>.avro``."""
    name = stored.key[len(STAGING) + 1 + len(prefix) :]
    final_stem, _, segment = name.partition("/")
    if not final_stem or "/" in segment or not segment.endswith(SUFFIX):
        return None
    _, _, stem = segment[: -len(SUFFIX)].partition("-")  # drop the writer's token
    try:
        shard_id, sequence, sub = parse_stem(stem)
    except ValueError:
        return None
    final = f"{prefix}{final_stem}{SUFFIX}"
    return _ArchiveFile(stored.key, hour_ms, shard_id, (sequence, sub), rolls_into=final)


class ArchiveSource:
    kind = "archive"

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.uri = storage.uri
        self.skipped = 0

    def files(
        self, namespace: str | None, start_ms: int | None, end_ms: int | None
    ) -> list[_ArchiveFile]:
        """The files of the partitions that can hold records of the window and namespace,
        rolled ones and the staging segments of those not rolled yet."""
        found = []
        for prefix, hour_ms in self._partitions("", namespace, start_ms, end_ms):
            for stored in self.storage.files(prefix):
                name = stored.key[len(prefix) :]
                if "/" in name or not name.endswith(SUFFIX):
                    continue
                try:
                    shard_id, sequence, sub = parse_stem(name[: -len(SUFFIX)])
                except ValueError:
                    continue
                found.append(_ArchiveFile(stored.key, hour_ms, shard_id, (sequence, sub)))
        for prefix, hour_ms in self._partitions(f"{STAGING}/", namespace, start_ms, end_ms):
            partition = prefix[len(STAGING) + 1 :]
            for stored in self.storage.files(prefix):
                segment = _segment(partition, stored, hour_ms)
                if segment is not None:
                    found.append(segment)
        return found

    def _partitions(
        self, base: str, namespace: str | None, start_ms: int | None, end_ms: int | None
    ) -> Iterator[tuple[str, int]]:
        """``(folder prefix, hour)`` of the ``namespace=/dt=/hour=`` folders under ``base``
        that can hold records of the window and namespace."""
        for ns_folder in self.storage.folders(base):
            if not ns_folder.startswith("namespace=") or (
                namespace is not None and ns_folder != f"namespace={namespace}"
            ):
                continue
            for dt_folder in self.storage.folders(f"{base}{ns_folder}"):
                try:
                    day_ms = _hour_ms(dt_folder, "hour=0")
                except ValueError:
                    continue
                if not _overlaps(day_ms, DAY_MS, start_ms, end_ms):
                    continue
                for hour_folder in self.storage.folders(f"{base}{ns_folder}/{dt_folder}"):
                    try:
                        hour_ms = _hour_ms(dt_folder, hour_folder)
                    except ValueError:
                        continue
                    if _overlaps(hour_ms, HOUR_MS, start_ms, end_ms):
                        yield f"{base}{ns_folder}/{dt_folder}/{hour_folder}/", hour_ms

    def items(
        self,
        *,
        namespace: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        skip: Mapping[str, int] | None = None,
    ) -> Iterator[SourceItem]:
        skip = skip or {}
        chains: dict[tuple[str, str], list[_ArchiveFile]] = {}
        for file in self.files(namespace, start_ms, end_ms):
            namespace_folder = file.key.split("/", 1)[0]
            chains.setdefault((namespace_folder, file.shard_id), []).append(file)

        def chain(files: list[_ArchiveFile]) -> Callable[[], Iterator[SourceItem]]:
            # One shard's files in stream order: merged by position, opened as reached.
            return lambda: _once(
                lazy_merge(
                    ((f.first, self._reader(f, skip.get(f.key, 0))) for f in files),
                    key=_stream_position,
                )
            )

        yield from lazy_merge(
            ((min(f.hour_ms for f in files), chain(files)) for files in chains.values()),
            key=_received,
        )

    def _open(self, file: _ArchiveFile) -> tuple[str, IO[bytes]]:
        """The file's key and contents; for a segment rolled since it was listed, its final
        file's."""
        if file.rolls_into is None:
            return file.key, self.storage.open(file.key)
        try:
            return file.key, self.storage.open(file.key)
        except P13nError:
            if self.storage.exists(file.key) or not self.storage.exists(file.rolls_into):
                raise
        return file.rolls_into, self.storage.open(file.rolls_into)

    def _reader(self, file: _ArchiveFile, skip: int) -> Callable[[], Iterator[SourceItem]]:
        def read() -> Iterator[SourceItem]:
            key, opened = self._open(file)
            with opened as handle:
                entries: Iterator[dict[str, Any]] = iter(fastavro.reader(handle))  # type: ignore[arg-type]
                if key != file.key:  # the final file: only the part the segment held, on
                    entries = (
                        e
                        for e in entries
                        if (int(e["sequenceNumber"]), e["subSequence"]) >= file.first
                    )
                leading = skip if key == file.key else 0
                if leading:
                    self.skipped += sum(1 for _ in islice(entries, leading))
                for index, entry in enumerate(entries, start=leading):
                    yield SourceItem(
                        key,
                        index,
                        UserRecord(
                            entry["shardId"],
                            entry["sequenceNumber"],
                            entry["subSequence"],
                            entry["partitionKey"],
                            entry["data"],
                            entry["arrivalMs"],
                        ),
                        entry["receivedAtMs"],
                        entry["namespace"],
                        entry["kind"],
                    )

        return read


def _once(items: Iterator[SourceItem]) -> Iterator[SourceItem]:
    """One shard's items in stream order, each position once (copies are adjacent)."""
    last: tuple[int, int] | None = None
    for item in items:
        position = _stream_position(item)
        if position != last:
            yield item
        last = position


def _stream_position(item: SourceItem) -> tuple[int, int]:
    return int(item.record.sequence_number), item.record.sub_sequence


def _received(item: SourceItem) -> int:
    return item.received_ms


# -- the sample project's Firehose output -----------------------------------------------------


def file_time_ms(stored: StoredFile) -> int:
    """The time in a Firehose object name (``...-YYYY-MM-DD-HH-MM-SS-...``), else its mtime."""
    found = _FIREHOSE_TIME.search(stored.key.rpartition("/")[2])
    if found:
        try:
            year, month, day, hour, minute, second = map(int, found.groups())
            stamp = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except ValueError:
            pass
        else:
            return int(stamp.timestamp() * 1000)
    return stored.modified_ms


def json_objects(raw: bytes) -> Iterator[tuple[Any, bytes, str | None]]:
    """``(value, original bytes, problem)`` for each JSON value of a file: concatenated or one
    per line, gzip or plain. A stretch that does not parse is reported up to the next line."""
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace")
    position = 0
    end = len(text)
    while True:
        while position < end and text[position] in " \t\r\n":
            position += 1
        if position >= end:
            return
        try:
            value, after = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            line_end = text.find("\n", position)
            after = end if line_end < 0 else line_end + 1
            yield None, text[position:after].encode(), f"not JSON: {exc.msg}"
        else:
            yield value, text[position:after].encode(), None
        position = after


def _sent_at_ms(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError("sentAt is not a time")
    if isinstance(value, int | float):
        return int(value * 1000)
    if isinstance(value, str):
        try:
            return int(float(value) * 1000)
        except ValueError:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return int(parsed.timestamp() * 1000)
    raise ValueError(f"sentAt {value!r} is not a time")


def _properties(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _event(event: Mapping[str, Any], file_ms: int) -> dict[str, Any]:
    attribution = event.get("metricAttribution")
    value = event.get("eventValue")
    return {
        "eventId": event.get("eventId"),
        "eventType": event["eventType"],
        "eventValue": float(value) if value is not None else None,
        "itemId": event.get("itemId"),
        "impression": list(event.get("impression") or []),
        "properties": _properties(event.get("properties")),
        "recommendationId": event.get("recommendationId"),
        "sentAt": _sent_at_ms(event.get("sentAt"), file_ms),
        "metricAttribution": (
            {"eventAttributionSource": attribution["eventAttributionSource"]}
            if attribution
            else None
        ),
    }


def derived_record_id(file_key: str, index: int, received_ms: int) -> bytes:
    """Like ``schemas.records.new_record_id`` (48-bit time, then 80 bits), but the 80 bits
    come from the file key and index, so converting the same file again gives the same ids."""
    digest = hashlib.sha256(f"{file_key}#{index}".encode()).digest()
    bits = int.from_bytes(digest[:10], "big")
    return ((max(received_ms, 0) << 80) | bits).to_bytes(16, "big")


def sample_record(
    value: Any, file_key: str, index: int, file_ms: int, partition_key: str
) -> dict[str, Any]:
    """The interactions record (Avro shape) for one sample-project Firehose object."""
    if not isinstance(value, Mapping) or not isinstance(value.get("body"), Mapping):
        raise ValueError("not a sample-project event: no 'body' object")
    body = value["body"]
    namespace = value.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("no 'namespace'")
    events = [_event(event, file_ms) for event in body.get("eventList") or []]
    received_ms = max((event["sentAt"] for event in events), default=file_ms)
    headers = value.get("headers") or {}
    key_field = partition_key if body.get(partition_key) else "sessionId"
    return {
        "recordId": derived_record_id(file_key, index, received_ms),
        "namespace": namespace,
        "receivedAt": received_ms,
        "partitionKeyField": key_field,
        "sessionId": body["sessionId"],
        "userId": body.get("userId"),
        "eventList": events,
        "experimentConversions": [
            {
                "recommender": c["recommender"],
                "feature": c["feature"],
                "metric": c["metric"],
                "value": float(c["value"]) if c.get("value") is not None else None,
            }
            for c in body.get("experimentConversions") or []
        ],
        "context": request_context({str(k).lower(): str(v) for k, v in headers.items()}),
    }


class FirehoseSource:
    kind = "firehose"

    def __init__(self, storage: Storage, codec: Codec, partition_key: str = "sessionId") -> None:
        self.storage = storage
        self.uri = storage.uri
        self.codec = codec
        self.partition_key = partition_key
        self.skipped = 0

    def files(self) -> list[StoredFile]:
        return [
            f
            for f in self.storage.files()
            if not f.key.startswith(STAGING + "/")
            and not f.key.rpartition("/")[2].startswith((".", "_"))
        ]

    def items(
        self,
        *,
        namespace: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        skip: Mapping[str, int] | None = None,
    ) -> Iterator[SourceItem]:
        skip = skip or {}
        yield from lazy_merge(
            (
                (file_time_ms(f) - FIREHOSE_LEAD_MS, self._reader(f, skip.get(f.key, 0)))
                for f in self.files()
            ),
            key=_received,
        )

    def _reader(self, stored: StoredFile, skip: int) -> Callable[[], Iterator[SourceItem]]:
        def read() -> Iterator[SourceItem]:
            with self.storage.open(stored.key) as handle:
                raw = handle.read()
            file_ms = file_time_ms(stored)
            for index, (value, original, problem) in enumerate(json_objects(raw)):
                if index < skip:
                    self.skipped += 1
                    continue
                yield self._item(stored.key, index, file_ms, value, original, problem)

        return read

    def _item(
        self,
        file_key: str,
        index: int,
        file_ms: int,
        value: Any,
        original: bytes,
        problem: str | None,
    ) -> SourceItem:
        namespace = value.get("namespace") if isinstance(value, Mapping) else None
        if not isinstance(namespace, str):
            namespace = None
        record: dict[str, Any] | None = None
        data = original
        if problem is None:
            try:
                record = sample_record(value, file_key, index, file_ms, self.partition_key)
                data = self.codec.encode(INTERACTION, record)
            except (KeyError, TypeError, ValueError, AttributeError, RecordError) as exc:
                reason = exc.message if isinstance(exc, RecordError) else f"{exc!r}"
                problem = f"cannot convert the sample-project event: {reason}"
                record = None
                data = original
        partition = str(record[record["partitionKeyField"]]) if record else ""
        return SourceItem(
            file_key,
            index,
            UserRecord(file_key, str(index), 0, partition, data, file_ms),
            record["receivedAt"] if record else file_ms,
            namespace,
            INTERACTION if record else None,
            record,
            problem,
        )
