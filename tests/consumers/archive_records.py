"""Synthetic stream records for the archive and replay tests, encoded by the real Codec."""

from __future__ import annotations

import calendar
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from consumers.base import Delivery
from schemas.codec import EXPOSURE, INTERACTION, Codec
from schemas.config import Config, load_config
from streams.base import UserRecord

CODEC = Codec.packaged()
HOUR_MS = 3_600_000
BASE_MS = calendar.timegm((2026, 1, 1, 0, 0, 0)) * 1000  # 2026-01-01T00:00:00Z
FIRST_SEQUENCE = 49_650_000_000_000_000_000_000_000_000_000_000_000_000_000_000


def shard_of(session: str, shards: int) -> str:
    return f"shardId-{zlib.crc32(session.encode()) % shards:012d}"


def interaction(
    n: int,
    received_ms: int,
    session: str,
    *,
    namespace: str = "shop",
    event_types: Sequence[str] = ("View",),
) -> dict[str, Any]:
    return {
        "recordId": ((received_ms << 80) | n).to_bytes(16, "big"),
        "namespace": namespace,
        "receivedAt": received_ms,
        "partitionKeyField": "sessionId",
        "sessionId": session,
        "userId": f"u-{session}",
        "eventList": [
            {
                "eventId": None,
                "eventType": event_type,
                "eventValue": None,
                "itemId": f"item-{(n + index) % 300}",
                "impression": [],
                "properties": None,
                "recommendationId": None,
                "sentAt": received_ms,
                "metricAttribution": None,
            }
            for index, event_type in enumerate(event_types)
        ],
        "experimentConversions": [],
        "context": {},
    }


def exposure(n: int, received_ms: int, user: str, namespace: str = "shop") -> dict[str, Any]:
    return {
        "recordId": ((received_ms << 80) | n).to_bytes(16, "big"),
        "namespace": namespace,
        "receivedAt": received_ms,
        "partitionKeyField": "userId",
        "userId": user,
        "sessionId": None,
        "action": "recommend-items",
        "recommender": "for-you",
        "feature": "ranking",
        "variation": "popular",
        "recommendationId": None,
    }


class Shards:
    """Hands out increasing sequence numbers per shard, as a stream would."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def record(self, shard_id: str, key: str, data: bytes, arrival_ms: int) -> UserRecord:
        sequence = self.next.get(shard_id, FIRST_SEQUENCE)
        self.next[shard_id] = sequence + 1000
        return UserRecord(shard_id, str(sequence), 0, key, data, arrival_ms)


def delivery(
    shards: Shards, fields: dict[str, Any], shard_count: int = 4, replay: bool = False
) -> Delivery:
    kind = INTERACTION if "eventList" in fields else EXPOSURE
    key = fields["sessionId"] if kind == INTERACTION else fields["userId"]
    data = CODEC.encode(kind, fields)
    record = shards.record(shard_of(key, shard_count), key, data, fields["receivedAt"] + 5)
    return Delivery(record, kind, fields, replay)


def synthetic(
    count: int,
    start_ms: int,
    span_ms: int,
    *,
    sessions: int = 1000,
    shard_count: int = 4,
    namespace: str = "shop",
    shards: Shards | None = None,
) -> list[Delivery]:
    """``count`` interactions spread evenly over ``[start_ms, start_ms + span_ms)``; every
    seventh has two events, every fifth includes a ``Purchase``."""
    shards = shards or Shards()
    out = []
    for n in range(count):
        received = start_ms + n * span_ms // count
        types = ("View", "Purchase") if n % 5 == 0 else ("View",)
        if n % 7 == 0:
            types = (*types, "Click")
        fields = interaction(
            n, received, f"s{n % sessions}", namespace=namespace, event_types=types
        )
        out.append(delivery(shards, fields, shard_count))
    return out


def runner_batches(deliveries: Sequence[Delivery], size: int = 500) -> Iterator[list[Delivery]]:
    """Batches as the runner hands them out: one shard at a time, in stream order."""
    pending: dict[str, list[Delivery]] = {}
    for item in deliveries:
        batch = pending.setdefault(item.record.shard_id, [])
        batch.append(item)
        if len(batch) >= size:
            yield pending.pop(item.record.shard_id)
    yield from pending.values()


def make_config(data_dir: str, targets: list[dict[str, Any]], namespace: str = "shop") -> Config:
    return load_config(
        {"dataDir": data_dir, "namespaces": {namespace: {"eventTargets": targets}}},
        source="test",
    )
