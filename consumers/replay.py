"""Replay: send archived events through one event target again (``p13n replay``).

The source is our archive or the sample project's Firehose output (``consumers.replay_sources``).
Only the named target receives the replay — found by ``name`` across the config's namespaces, or
as ``namespace/name`` — through a ``GroupConsumer`` of its own: group ``replay:{namespace}/
{name}``, so the live group's checkpoints are never touched, with the live retries, backoff and
dead letters. Records go in chunks of the target's batch size, one chunk settled before the next
is read, and the source yields them in time order: one session's records arrive in the order
they were written. Delivered records are marked ``Delivery.replay`` (the archive target does not
archive them again).

Filters: ``receivedAt`` in ``[start, end)``; the target's namespace and record kinds (a
``namespace`` given must be the target's); ``event_type`` keeps the records holding at least one
event of that type, and sends them whole. Records are never cut down to the matching events: an
event without its own id is known by its record id and *position* in the record
(``schemas.records.event_id``), so a trimmed record would hand the target new ids — duplicates
in Personalize — and no longer be the bytes that were written.

Resuming: after each settled chunk the state file ``<dataDir>/replay/<hash>.json`` (one per
source, target and filters; written to a temporary name, fsynced and renamed) records, for each
source file, how many of its leading items are settled — within a file the order never changes,
so this is exactly "everything up to the last settled position" of that file, and it stays true
when new files appear. ``resume`` skips those items: nothing is delivered twice. A run stopped
in the middle of a chunk (a stop during its retries) has not settled it; that chunk is sent
again on resume (at least once, like the live consumers).

``rate`` caps records per second (a record is one accepted ``POST /events`` request) with a
token bucket; chunks are then cut to the bucket's burst so the pace stays smooth. ``dry_run``
reads and filters and counts, and delivers, dead-letters and saves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.base import Target
from consumers.deadletters import DeadLetter, dead_letter_store
from consumers.replay_sources import Source, SourceItem, open_source
from consumers.runner import GroupConsumer, Interrupted, RetryPolicy
from consumers.storage import FileStorage
from consumers.targets import TargetContext, build_target
from schemas.codec import EXPOSURE, INTERACTION, Codec
from schemas.config import Config, TargetConfig
from schemas.errors import ConfigError, RecordError
from streams.base import Position, Shard, ShardCursor
from streams.pacing import TokenBucket

PROGRESS_EVERY = 2048  # items read between progress reports


@dataclass
class ReplaySummary:
    source: str
    target: str
    read: int = 0
    matched: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    skipped: int = 0  # settled by an earlier run (resume)
    dry_run: bool = False
    interrupted: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class Filters:
    namespace: str
    kinds: frozenset[str]
    start_ms: int | None = None
    end_ms: int | None = None
    event_type: str | None = None

    def identity(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "from": self.start_ms,
            "to": self.end_ms,
            "eventType": self.event_type,
        }

    def matches(self, item: SourceItem, codec: Codec) -> bool:
        if (self.start_ms is not None and item.received_ms < self.start_ms) or (
            self.end_ms is not None and item.received_ms >= self.end_ms
        ):
            return False
        if item.problem is not None:  # unreadable: dead-lettered unless clearly someone else's
            return item.namespace in (None, self.namespace)
        if item.namespace != self.namespace or item.kind not in self.kinds:
            return False
        if self.event_type is None:
            return True
        fields = item.fields
        if fields is None:
            try:
                fields = codec.decode(item.record.data)[1]
            except RecordError:
                return True  # let the runner dead-letter it, with its reason
        return any(e.get("eventType") == self.event_type for e in fields.get("eventList", ()))


@dataclass
class ReplayState:
    """Per source file, how many leading items are settled."""

    path: str
    identity: dict[str, Any]
    done: dict[str, int] = field(default_factory=dict)
    last: str | None = None
    finished: bool = False

    @classmethod
    def load(cls, path: str, identity: dict[str, Any]) -> ReplayState:
        try:
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
        except FileNotFoundError:
            return cls(path, identity)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"replay state {path} is unreadable: {exc}") from exc
        return cls(path, identity, dict(saved["done"]), saved.get("last"), saved["finished"])

    def settled(self, items: Sequence[SourceItem]) -> None:
        for item in items:
            if item.index >= self.done.get(item.file, 0):
                self.done[item.file] = item.index + 1
        self.last = items[-1].position

    def save(self) -> None:
        document = {
            **self.identity,
            "done": self.done,
            "last": self.last,
            "finished": self.finished,
            "savedAt": datetime.now(UTC).isoformat(),
        }
        folder, name = os.path.split(self.path)
        FileStorage(folder).put(name, json.dumps(document, indent=1).encode())


def find_target(config: Config, name: str, namespace: str | None = None) -> TargetConfig:
    """The one target called ``name`` (or ``namespace/name``), in ``namespace`` if given."""
    every = [t for ns in config.namespaces.values() for t in ns.event_targets]
    chosen = [
        t
        for t in every
        if name in (t.name, t.group) and (namespace is None or t.namespace == namespace)
    ]
    where = f" in namespace '{namespace}'" if namespace else ""
    if not chosen:
        raise ConfigError(f"no event target named '{name}'{where}")
    if len(chosen) > 1:
        spaces = ", ".join(t.namespace for t in chosen)
        raise ConfigError(
            f"event target '{name}' is in namespaces {spaces}: "
            f"name it NAMESPACE/{name} or give --namespace"
        )
    return chosen[0]


def state_path(config: Config, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return os.path.join(config.data_dir, "replay", f"{digest}.json")


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class _NoStream:
    """Replay settles records it reads itself; the consumer never reads the stream."""

    def list_shards(self) -> list[Shard]:
        raise RuntimeError("a replay consumer does not read the stream")

    def open(
        self, shard_id: str, after: Position | None = None, *, at_end: bool = False
    ) -> ShardCursor:
        raise RuntimeError("a replay consumer does not read the stream")

    def load(self, group: str, shard_id: str) -> Position | None:
        raise RuntimeError("a replay consumer keeps no checkpoints")

    def save(self, group: str, shard_id: str, position: Position) -> None:
        raise RuntimeError("a replay consumer keeps no checkpoints")

    def close(self) -> None:
        pass


def replay(
    source_uri: str,
    target_name: str,
    config: Config,
    *,
    namespace: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    event_type: str | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    resume: bool = False,
    on_progress: Callable[[ReplaySummary], None] | None = None,
    stop: threading.Event | None = None,
    build: Callable[[TargetConfig, TargetContext], Target] = build_target,
) -> ReplaySummary:
    """Replay ``source_uri`` into one target; see the module docstring. ``on_progress`` is
    shown the summary so far: once before the first read, every ``PROGRESS_EVERY`` items read,
    after each settled chunk and at the end."""
    began = time.monotonic()
    stop = stop or threading.Event()
    target_config = find_target(config, target_name, namespace)
    codec = Codec.packaged()
    target = build(target_config, TargetContext(config, codec))
    kinds: frozenset[str] = getattr(target, "kinds", frozenset({INTERACTION, EXPOSURE}))
    source = open_source(source_uri, codec, partition_key=config.partition_key)
    filters = Filters(target_config.namespace, kinds, _ms(start), _ms(end), event_type)
    group = f"replay:{target_config.group}"
    identity = {"source": source.uri, "target": target_config.group, **filters.identity()}
    path = state_path(config, identity)
    state = ReplayState.load(path, identity) if resume else ReplayState(path, identity)
    size, bucket = _pace(target_config.batch_size or config.consumer.batch_size, rate)
    run = _Run(
        source,
        filters,
        codec,
        _consumer(config, target_config, target, codec, group, stop),
        state,
        ReplaySummary(source.uri, group, dry_run=dry_run),
        size,
        bucket,
        stop,
        on_progress or (lambda _: None),
    )
    run.show()
    if not dry_run:
        target.open()
    try:
        run.read()
    except Interrupted:
        run.summary.interrupted = True
    finally:
        if not dry_run:
            target.close()
            state.save()
        run.summary.skipped = source.skipped
        run.summary.seconds = time.monotonic() - began
        run.show()
    return run.summary


def _pace(size: int, rate: float | None) -> tuple[int, TokenBucket | None]:
    """The chunk size and the token bucket for ``rate`` records a second (none: no limit);
    with a rate, chunks are cut to the bucket's burst so the pace stays smooth."""
    if rate is None:
        return size, None
    bucket = TokenBucket(rate, burst=max(1.0, rate / 10))
    return max(1, min(size, int(bucket.burst))), bucket


@dataclass
class _Run:
    """One replay's reading, filtering and settling, chunk by chunk."""

    source: Source
    filters: Filters
    codec: Codec
    consumer: GroupConsumer
    state: ReplayState
    summary: ReplaySummary
    size: int
    bucket: TokenBucket | None
    stop: threading.Event
    show_progress: Callable[[ReplaySummary], None]

    def show(self) -> None:
        self.show_progress(self.summary)

    def read(self) -> None:
        """Every matching item, settled in chunks of ``size``; a dry run only counts them. Sets
        ``state.finished`` when the source was read to its end (and this is no dry run)."""
        summary, filters = self.summary, self.filters
        chunk: list[SourceItem] = []
        items = self.source.items(
            namespace=filters.namespace,
            start_ms=filters.start_ms,
            end_ms=filters.end_ms,
            skip=self.state.done,
        )
        for item in items:
            if self.stop.is_set():
                summary.interrupted = True
                return
            summary.read += 1
            if summary.read % PROGRESS_EVERY == 0:
                self.show()
            if not filters.matches(item, self.codec):
                continue
            summary.matched += 1
            if summary.dry_run:
                continue
            chunk.append(item)
            if len(chunk) >= self.size:
                self.settle(chunk)
                chunk = []
        if chunk:
            self.settle(chunk)
        self.state.finished = not summary.dry_run

    def settle(self, chunk: list[SourceItem]) -> None:
        if self.bucket is not None:
            self.bucket.acquire(len(chunk))
        usable = [item.record for item in chunk if item.problem is None]
        delivered, dead = self.consumer.settle(usable, replay=True) if usable else (0, 0)
        group = self.consumer.group
        unreadable = [_letter(group, item) for item in chunk if item.problem is not None]
        if unreadable:
            self.consumer.dead_letters.put(unreadable)
        self.summary.delivered += delivered
        self.summary.dead_lettered += dead + len(unreadable)
        self.state.settled(chunk)
        self.state.save()
        self.show()


def _consumer(
    config: Config,
    target_config: TargetConfig,
    target: Target,
    codec: Codec,
    group: str,
    stop: threading.Event,
) -> GroupConsumer:
    defaults = config.consumer
    policy = RetryPolicy.for_target(target_config, defaults)
    nothing = _NoStream()
    return GroupConsumer(
        group,
        target_config.namespace,
        target,
        nothing,
        nothing,
        dead_letter_store(target_config.dead_letter_uri or config.dead_letter_uri, config.data_dir),
        codec,
        kinds=getattr(target, "kinds", frozenset({INTERACTION, EXPOSURE})),
        policy=policy,
        stop=stop,
    )


def _letter(group: str, item: SourceItem) -> DeadLetter:
    now_ms = int(time.time() * 1000)
    record = item.record
    return DeadLetter(
        letter_id=uuid.uuid4().hex,
        group=group,
        record_id=None,
        error_type="permanent:RecordError",
        code="UnreadableSource",
        message=f"{item.position}: {item.problem}",
        attempts=0,
        first_attempt_ms=now_ms,
        last_attempt_ms=now_ms,
        shard_id=record.shard_id,
        sequence_number=record.sequence_number,
        sub_sequence=record.sub_sequence,
        partition_key=record.partition_key,
        data=record.data,
    )
