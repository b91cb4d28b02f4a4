"""Interaction records for the JSON targets' tests (kinesis-stream, firehose, http, lambda).

Records go through the real Avro codec, so a target sees exactly what the runner hands it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from consumers.base import Delivery
from consumers.targets import TargetContext
from schemas.codec import INTERACTION, Codec
from schemas.config import TargetConfig, default_document, load_config
from schemas.records import new_record_id
from streams.base import UserRecord

CODEC = Codec.packaged()
CONTEXT = TargetContext(load_config(default_document()), CODEC)
BASE_MS = 1_700_000_000_000


def event(event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "eventType": "View",
        "eventValue": None,
        "itemId": None,
        "impression": [],
        "properties": None,
        "recommendationId": None,
        "sentAt": BASE_MS,
        "metricAttribution": None,
        **fields,
    }


def record(session: str, *events: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "recordId": new_record_id(),
        "namespace": "shop",
        "receivedAt": BASE_MS,
        "partitionKeyField": "sessionId",
        "sessionId": session,
        "userId": None,
        "eventList": list(events) if events else [event()],
        "experimentConversions": [],
        "context": {},
        **fields,
    }


def deliveries(records: Iterable[Mapping[str, Any]], *, replay: bool = False) -> list[Delivery]:
    """As the runner hands them over: encoded to stream bytes, decoded again."""
    batch = []
    for n, fields in enumerate(records):
        data = CODEC.encode(INTERACTION, fields)
        kind, decoded = CODEC.decode(data)
        user_record = UserRecord("shard-0", str(n + 1), 0, fields["sessionId"], data, BASE_MS)
        batch.append(Delivery(user_record, kind, decoded, replay))
    return batch


def records_of(sessions: Sequence[str]) -> list[dict[str, Any]]:
    """One record per entry of ``sessions`` (its partition key), each event id naming its place:
    ``<session>-<n>`` for the session's n-th record."""
    seen: dict[str, int] = {}
    out = []
    for session in sessions:
        n = seen.get(session, 0)
        seen[session] = n + 1
        out.append(record(session, event(f"{session}-{n}")))
    return out


def target_config(type_: str, *, name: str = "t", **options: Any) -> TargetConfig:
    common = {k: options.pop(k) for k in ("endpoint_url", "batch_size") if k in options}
    return TargetConfig(
        type=type_,
        name=name,
        namespace="shop",
        options=MappingProxyType(options),
        region="us-east-1",
        **common,
    )
