"""``p13n stream tail``: decoded stream records as JSON lines, one per user record."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import msgspec

from schemas.codec import INTERACTION, Codec
from schemas.errors import RecordError
from schemas.records import event_id, with_partition_key
from streams.base import ShardCursor, StreamReader, UserRecord

POLL_SECONDS = 0.2


def describe(record: UserRecord, codec: Codec) -> dict[str, Any]:
    """One user record as a JSON-ready dict; undecodable bytes are shown, not hidden."""
    line: dict[str, Any] = {
        "shardId": record.shard_id,
        "sequenceNumber": record.sequence_number,
        "subSequence": record.sub_sequence,
        "partitionKey": record.partition_key,
        "arrivalMs": record.arrival_ms,
    }
    try:
        name, fields = codec.decode(record.data)
    except RecordError as exc:
        line.update(
            kind="undecodable", error=exc.message, data=base64.b64encode(record.data).decode()
        )
        return line
    if name == INTERACTION:
        with_partition_key(fields, record.partition_key)
        for index, event in enumerate(fields["eventList"]):
            event["eventId"] = event_id(fields, index)
    fields["recordId"] = fields["recordId"].hex()
    line.update(kind=name.rsplit(".", 1)[-1].lower(), record=fields)
    return line


def records(reader: StreamReader, *, from_start: bool, follow: bool) -> Iterator[UserRecord]:
    """Every shard's records, merged by arrival time per poll; forever when ``follow``."""
    cursors: dict[str, ShardCursor] = {}
    while True:
        for shard in reader.list_shards():
            if shard.shard_id not in cursors:
                cursors[shard.shard_id] = reader.open(shard.shard_id, at_end=not from_start)
        polled: list[UserRecord] = []
        for cursor in cursors.values():
            polled.extend(cursor.read(1000).records)
        polled.sort(
            key=lambda r: (r.arrival_ms, r.shard_id, int(r.sequence_number), r.sub_sequence)
        )
        yield from polled
        if not polled:
            if not follow:
                return
            time.sleep(POLL_SECONDS)


def tail(
    reader: StreamReader,
    out: TextIO,
    *,
    from_start: bool,
    follow: bool,
    limit: int | None,
    codec: Codec | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    codec = codec or Codec.packaged()
    encoder = msgspec.json.Encoder()
    count = 0
    for record in records(reader, from_start=from_start, follow=follow):
        out.write(encoder.encode(describe(record, codec)).decode() + "\n")
        out.flush()
        count += 1
        if (limit is not None and count >= limit) or stop():
            break
    return count
