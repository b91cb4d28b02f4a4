"""The KPL aggregated record format: many user records in one Kinesis record.

An aggregate is ``F3 89 9A C2`` + a protobuf ``AggregatedRecord`` (partition-key table,
optional explicit-hash-key table, records) + the 16-byte MD5 of the protobuf. Packing and the
protobuf messages come from ``aws_kinesis_agg``; this module adds what the writer needs on top:
aggregates sized to the Kinesis record limit *including* their partition key, routed to the
shard of their first user record, and an unpacker that never raises on foreign bytes.

Contract: ``pack`` keeps entry order, inside each aggregate and across aggregates, so unpacking
the aggregates in turn yields the entries in the order given. Callers that want shard-aware
routing pass entries of one shard at a time (``streams.kinesis`` does); ``pack`` itself routes
each aggregate by its first entry only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from aws_kinesis_agg import DIGEST_SIZE, MAGIC

# The aggregator module puts its own folder on sys.path, which messages_pb2 needs to import
# config_pb2; keep this import order.
from aws_kinesis_agg.aggregator import AggRecord
from aws_kinesis_agg.messages_pb2 import AggregatedRecord
from google.protobuf.message import DecodeError

from schemas.errors import PayloadTooLarge
from streams.base import Entry
from streams.hashing import MAX_HASH_KEY, hash_key

# Kinesis counts data + partition key against this limit (before base64).
MAX_KINESIS_RECORD_BYTES = 1024 * 1024
DEFAULT_MAX_BYTES = 1_000_000
_FRAME_BYTES = len(MAGIC) + DIGEST_SIZE

UnpackedRecord = tuple[str, int | None, bytes]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One Kinesis record holding ``count`` user records. ``explicit_hash_key`` is the decimal
    hash key of the first user record, so the aggregate lands on that record's shard."""

    partition_key: str
    explicit_hash_key: str
    data: bytes
    count: int

    @property
    def size(self) -> int:
        """Bytes Kinesis counts for this record: data plus partition key."""
        return len(self.data) + len(self.partition_key.encode("utf-8"))


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def single_size(entry: Entry) -> int:
    """Bytes Kinesis would count for an aggregate holding only ``entry`` (data + key)."""
    key = entry.partition_key.encode("utf-8")
    key_field = 1 + _varint_len(len(key)) + len(key)
    inner = 2 + 1 + _varint_len(len(entry.data)) + len(entry.data)  # key index 0, then data
    return _FRAME_BYTES + key_field + 1 + _varint_len(inner) + inner + len(key)


def pack_head(entries: Sequence[Entry], max_bytes: int = DEFAULT_MAX_BYTES) -> Aggregate:
    """Pack the longest prefix of ``entries`` that fits one aggregate of at most ``max_bytes``
    (data + partition key). Raises ``PayloadTooLarge`` if not even the first entry fits."""
    if not entries:
        raise ValueError("nothing to pack")
    if max_bytes > MAX_KINESIS_RECORD_BYTES:
        raise ValueError(f"max_bytes {max_bytes} exceeds the Kinesis record limit")
    first = entries[0]
    record = AggRecord(max_bytes - len(first.partition_key.encode("utf-8")))
    count = 0
    for entry in entries:
        # Keys go in as bytes: the library sizes str keys as if every record added a new
        # table entry, which leaves aggregates several percent short of the limit.
        try:
            added = record.add_user_record(entry.partition_key.encode("utf-8"), entry.data)
        except ValueError:
            added = False
        if not added:
            break
        count += 1
    if count == 0:
        raise PayloadTooLarge(
            f"a record of {len(first.data)} bytes does not fit a {max_bytes}-byte aggregate",
            code="RecordTooLarge",
        )
    _, _, data = record.get_contents()
    return Aggregate(
        partition_key=first.partition_key,
        explicit_hash_key=str(hash_key(first.partition_key)),
        data=data,
        count=count,
    )


def pack(entries: Sequence[Entry], max_bytes: int = DEFAULT_MAX_BYTES) -> list[Aggregate]:
    """Pack ``entries`` in order into as few aggregates as fit ``max_bytes`` each."""
    out: list[Aggregate] = []
    start = 0
    while start < len(entries):
        aggregate = pack_head(entries[start:], max_bytes)
        out.append(aggregate)
        start += aggregate.count
    return out


def unpack(data: bytes) -> list[UnpackedRecord] | None:
    """The user records ``(partition_key, explicit_hash_key, data)`` of an aggregate, or None
    when ``data`` is not one (no magic, wrong digest, protobuf that does not parse, dangling
    table index, no records). None means: treat ``data`` as one plain record. Never raises."""
    if len(data) <= _FRAME_BYTES or not data.startswith(MAGIC):
        return None
    body, digest = data[len(MAGIC) : -DIGEST_SIZE], data[-DIGEST_SIZE:]
    if hashlib.md5(body).digest() != digest:
        return None
    message = AggregatedRecord()
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError):
        return None
    if not message.records or not message.IsInitialized():
        return None
    keys = list(message.partition_key_table)
    hash_keys = [_parse_hash_key(value) for value in message.explicit_hash_key_table]
    out: list[UnpackedRecord] = []
    for record in message.records:
        if record.partition_key_index >= len(keys):
            return None
        explicit: int | None = None
        if record.HasField("explicit_hash_key_index"):
            if record.explicit_hash_key_index >= len(hash_keys):
                return None
            explicit = hash_keys[record.explicit_hash_key_index]
        out.append((keys[record.partition_key_index], explicit, bytes(record.data)))
    return out


def _parse_hash_key(value: str) -> int | None:
    # A malformed hash key is the producer's bug, not a reason to lose the user records.
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 <= number <= MAX_HASH_KEY else None
