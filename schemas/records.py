"""What stream records hold beyond their Avro shape: ids, derived event ids, request context.

Interaction and exposure records are plain dicts shaped by ``schemas/avro/*.avsc``; this module
gives them the few rules that the schema cannot express.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

# Allow-listed request headers kept with an interaction, and the short codes they are stored
# under (records are small; the sample project's JSON target rebuilds the header names).
# Authentication headers (authorization, x-api-key, cookie) are never on this list.
CONTEXT_HEADERS: Mapping[str, str] = {
    "user-agent": "ua",
    "accept-language": "al",
    "referer": "ref",
    "cloudfront-viewer-country": "cc",
    "cloudfront-viewer-country-region": "rg",
    "cloudfront-viewer-city": "ci",
    "cloudfront-viewer-postal-code": "pc",
    "cloudfront-viewer-metro-code": "mc",
    "cloudfront-viewer-time-zone": "tz",
    "cloudfront-viewer-latitude": "lat",
    "cloudfront-viewer-longitude": "lon",
    "cloudfront-is-desktop-viewer": "dsk",
    "cloudfront-is-mobile-viewer": "mob",
    "cloudfront-is-tablet-viewer": "tab",
    "cloudfront-is-smarttv-viewer": "tv",
    "cloudfront-is-android-viewer": "and",
    "cloudfront-is-ios-viewer": "ios",
}
CONTEXT_HEADER_NAMES: Mapping[str, str] = {code: name for name, code in CONTEXT_HEADERS.items()}
MAX_CONTEXT_VALUE = 512


def new_record_id(now_ms: int | None = None) -> bytes:
    """16 bytes: 48-bit epoch milliseconds then 80 random bits, so ids sort by time.

    The bits need to be unique, not secret: ``random`` (reseeded in forked workers) costs
    no system call, unlike ``os.urandom``.
    """
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    return ((millis << 80) | random.getrandbits(80)).to_bytes(16, "big")


def request_context(headers: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed headers of a request (names lower-case), values length-capped."""
    context = {}
    for name, code in CONTEXT_HEADERS.items():
        value = headers.get(name)
        if value:
            context[code] = value[:MAX_CONTEXT_VALUE]
    return context


def context_headers(context: Mapping[str, str]) -> dict[str, str]:
    """Back from short codes to header names (unknown codes are kept as they are)."""
    return {CONTEXT_HEADER_NAMES.get(code, code): value for code, value in context.items()}


def event_id(record: Mapping[str, Any], index: int) -> str:
    """The event's own id, or the deterministic one derived from the record id and position,
    so redelivery and replay send Personalize the same id."""
    given = record["eventList"][index].get("eventId")
    return given if given else f"{record['recordId'].hex()}-{index}"


def without_partition_key(record: dict[str, Any], partition_key: str) -> dict[str, Any]:
    """The interactions record as written: the field that is the partition key is left empty
    (``""`` for ``sessionId``, null for ``userId``), since every stream record carries its
    partition key beside its data (Kinesis record, KPL table, log row, archive envelope) and
    a typical record would otherwise hold it twice. ``with_partition_key`` undoes it."""
    field = record["partitionKeyField"]
    if record.get(field) == partition_key:
        record[field] = "" if field == "sessionId" else None
    return record


def with_partition_key(fields: dict[str, Any], partition_key: str) -> dict[str, Any]:
    """A decoded interactions record made whole again from its stream record's partition key."""
    field = fields.get("partitionKeyField")
    if field == "sessionId" and fields.get("sessionId") == "":
        fields["sessionId"] = partition_key
    elif field == "userId" and fields.get("userId") is None:
        fields["userId"] = partition_key
    return fields
