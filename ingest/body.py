"""The POST /events request body, as the sample project defined it, with PutEvents limits.

Which content types are read as JSON (``check_media_type``, for every POST body): JSON itself
(``application/json``, ``application/*+json``), and also ``text/plain`` and no content type at
all — what ``navigator.sendBeacon`` sends for a string, and what a page sends with ``fetch`` to
stay a CORS "simple request" (no preflight). The sample project parsed the body whatever its
type; anything clearly other (forms, multipart, XML, binary) is 415 here.

Decoding checks types and the per-field limits of Amazon Personalize PutEvents (the botocore
model states them; botocore does not enforce them client-side, so we do, here, before anything
is written). Unknown fields are refused so that a typo is an error, not silently lost data;
``trackingId``, which clients of the sample may still send, is accepted and ignored (the event
tracker is the config's business).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from schemas.errors import InvalidRequest, UnsupportedMediaType

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# PutEvents' eventValue is a 32-bit float (the stream record stores it as an Avro float too):
# anything beyond its range would silently become infinity.
FLOAT32_MAX = 3.4028234663852886e38


class MetricAttribution(msgspec.Struct, forbid_unknown_fields=True):
    eventAttributionSource: Id


class Event(msgspec.Struct, forbid_unknown_fields=True):
    eventType: Id
    eventId: Id | None = None
    eventValue: Annotated[float, msgspec.Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)] | None = None
    itemId: Id | None = None
    impression: Annotated[list[Id], msgspec.Meta(max_length=25)] | None = None
    properties: str | dict[str, Any] | None = None
    recommendationId: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | None = None
    # Epoch seconds (the sample project's unit); absent means "when received".
    sentAt: Annotated[float, msgspec.Meta(gt=0, lt=32503680000)] | None = None
    metricAttribution: MetricAttribution | None = None


class Conversion(msgspec.Struct, forbid_unknown_fields=True):
    recommender: Id
    # Either may be left out when the recommender has one experiment / the experiment one metric.
    feature: Id | None = None
    metric: Id | None = None
    value: float | None = None


class EventsBody(msgspec.Struct, forbid_unknown_fields=True):
    sessionId: Id | None = None
    userId: Id | None = None
    eventList: Annotated[list[Event], msgspec.Meta(max_length=10)] = []
    experimentConversions: Annotated[list[Conversion], msgspec.Meta(max_length=100)] = []
    # The sample's clients send the Personalize tracking id; the config names the tracker here.
    trackingId: str | None = None


_decoder = msgspec.json.Decoder(EventsBody)

# Media types read as JSON besides application/json and application/*+json.
JSON_AS_WELL = frozenset({"", "text/plain"})


def check_media_type(value: str | None) -> None:
    """Refuse (415) a request body whose ``Content-Type`` is not one read as JSON."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if (
        media == "application/json"
        or media in JSON_AS_WELL
        or (media.startswith("application/") and media.endswith("+json"))
    ):
        return
    raise UnsupportedMediaType(
        f"Content-Type must be application/json (or text/plain), not '{media}'"
    )


def decode_body(raw: bytes) -> EventsBody:
    """Parse and type-check a request body; ``InvalidRequest`` names the position or path."""
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        # The sample project's code for a malformed conversion; PutEvents' for the rest.
        where = "$.experimentConversions"
        code = "InvalidExperimentConversions" if where in str(exc) else None
        raise InvalidRequest(f"Invalid request body: {exc}", code=code) from None
    except msgspec.DecodeError as exc:
        reason = str(exc)
        if "byte" not in reason:  # truncation: the position is the end of the input
            reason = f"{reason} (at byte {len(raw)})"
        raise InvalidRequest(
            f"Request body is not valid JSON: {reason}", code="InvalidJSONRequestPayload"
        ) from None
