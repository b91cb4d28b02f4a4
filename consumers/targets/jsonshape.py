"""The "sample-json" shape: an interaction as the sample project's JSON targets wrote it.

The sample project sent each ``POST /events`` request on as ``{"namespace", "path", "headers",
"queryStringParameters", "body"}``; existing readers of its streams keep working on this. The
body is the request body as a client would send it: events carry their ``eventId`` (derived when
the client gave none), ``sentAt`` in epoch seconds and ``properties`` as JSON text; fields the
client left out stay out. Headers are the allow-listed ones kept with the record, under their
real names. p13n adds ``recordId`` (hex) and, for replayed deliveries, ``"replay": true``.

``event`` is the one builder of a Personalize-shaped event, shared with the
personalize-event-tracker target, which only serialises ``sentAt`` its own way (botocore's).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

from schemas.records import context_headers, event_id

_OPTIONAL_EVENT_FIELDS = ("itemId", "properties", "recommendationId")


def sample_json(fields: Mapping[str, Any], *, replay: bool = False) -> dict[str, Any]:
    """The JSON document for one interaction record (decoded Avro fields)."""
    body: dict[str, Any] = {"sessionId": fields["sessionId"]}
    if fields.get("userId") is not None:
        body["userId"] = fields["userId"]
    body["eventList"] = [event(fields, n, e) for n, e in enumerate(fields.get("eventList") or ())]
    conversions = [
        {k: v for k, v in conversion.items() if v is not None}
        for conversion in fields.get("experimentConversions") or ()
    ]
    if conversions:
        body["experimentConversions"] = conversions
    doc: dict[str, Any] = {
        "namespace": fields["namespace"],
        "path": f"/events/{fields['namespace']}",
        "headers": context_headers(fields.get("context") or {}),
        "queryStringParameters": {},
        "body": body,
        "recordId": bytes(fields["recordId"]).hex(),
    }
    if replay:
        doc["replay"] = True
    return doc


def encode(document: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _seconds(millis: int) -> float:
    return millis / 1000


def event(
    record: Mapping[str, Any],
    index: int,
    fields: Mapping[str, Any],
    *,
    sent_at: Callable[[int], int | float] = _seconds,
) -> dict[str, Any]:
    """Event ``index`` of an interaction ``record`` (its decoded ``fields``) as the Personalize
    ``Event`` shape: ``sentAt`` in epoch seconds (by ``sent_at``, from the stored milliseconds;
    a float by default), ``eventId`` derived when the client gave none, fields left out staying
    out."""
    out: dict[str, Any] = {
        "eventId": event_id(record, index),
        "eventType": fields["eventType"],
        "sentAt": sent_at(fields["sentAt"]),
    }
    if fields.get("eventValue") is not None:
        out["eventValue"] = _float32(fields["eventValue"])
    for key in _OPTIONAL_EVENT_FIELDS:
        if fields.get(key) is not None:
            out[key] = fields[key]
    if fields.get("impression"):
        out["impression"] = list(fields["impression"])
    if fields.get("metricAttribution") is not None:
        out["metricAttribution"] = dict(fields["metricAttribution"])
    return out


def _float32(value: float) -> float:
    """The shortest decimal that is the same 32-bit float: ``eventValue`` is stored as an Avro
    float, and a client's 4.99 should come out as 4.99, not 4.989999771118164."""
    stored = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(1, 10):
        candidate = float(f"{stored:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == stored:
            return candidate
    return float(stored)
