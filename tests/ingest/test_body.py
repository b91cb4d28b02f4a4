"""Request body decoding: types, PutEvents limits, unknown fields, malformed JSON."""

from __future__ import annotations

import json

import pytest

from ingest.body import decode_body
from schemas.errors import InvalidRequest


def body(**fields) -> bytes:
    base = {"sessionId": "s", "eventList": [{"eventType": "View", "itemId": "i"}]}
    base.update(fields)
    return json.dumps(base).encode()


def event(**fields) -> bytes:
    return body(eventList=[{"eventType": "View", **fields}])


def test_a_full_sample_body_decodes():
    decoded = decode_body(
        body(
            userId="u",
            eventList=[
                {
                    "eventId": "e1",
                    "eventType": "Purchase",
                    "eventValue": 9.5,
                    "impression": ["a", "b"],
                    "itemId": "a",
                    "properties": {"discount": "yes"},
                    "recommendationId": "r" * 40,
                    "sentAt": 1_700_000_000.5,
                    "metricAttribution": {"eventAttributionSource": "email"},
                }
            ],
            experimentConversions=[{"recommender": "r", "feature": "f", "metric": "m", "value": 1}],
        )
    )
    assert decoded.eventList[0].properties == {"discount": "yes"}
    assert decoded.experimentConversions[0].value == 1.0


@pytest.mark.parametrize(
    "raw, message",
    [
        (event(itemId="x" * 257), "length <= 256 - at `$.eventList[0].itemId`"),
        (event(eventType=""), "length >= 1 - at `$.eventList[0].eventType`"),
        (event(recommendationId="r" * 41), "length <= 40 - at `$.eventList[0].recommendationId`"),
        (event(impression=["i"] * 26), "length <= 25 - at `$.eventList[0].impression`"),
        (event(impression=["x" * 257]), "`$.eventList[0].impression[0]`"),
        (event(sentAt=-1), "`$.eventList[0].sentAt`"),
        (
            event(eventValue="high"),
            "Expected `float | null`, got `str` - at `$.eventList[0].eventValue`",
        ),
        (event(trackingId="t"), "unknown field `trackingId` - at `$.eventList[0]`"),
        (body(trackingID="t"), "unknown field `trackingID`"),
        (body(eventList=[{"eventType": "v"}] * 11), "length <= 10 - at `$.eventList`"),
        (body(sessionId="s" * 257), "length <= 256 - at `$.sessionId`"),
        (body(sessionId=7), "Expected `str | null`, got `int` - at `$.sessionId`"),
        (b"[]", "Expected `object`, got `array`"),
        (
            body(experimentConversions=[{"feature": "f"}]),
            "missing required field `recommender` - at `$.experimentConversions[0]`",
        ),
    ],
)
def test_invalid_bodies_name_the_field(raw, message):
    with pytest.raises(InvalidRequest) as caught:
        decode_body(raw)
    assert message in caught.value.message
    assert caught.value.status == 400
    # The sample project's codes: its own for conversions, PutEvents' for the rest.
    conversions = "experimentConversions" in message
    expected = "InvalidExperimentConversions" if conversions else "ValidationError"
    assert caught.value.code == expected


@pytest.mark.parametrize(
    "raw, position",
    [(b'{"sessionId": }', "byte 14"), (b"", "byte 0"), (b'{"sessionId": "s"', "byte 17")],
)
def test_malformed_json_gives_the_position(raw, position):
    with pytest.raises(InvalidRequest) as caught:
        decode_body(raw)
    assert caught.value.code == "InvalidJSONRequestPayload"
    assert position in caught.value.message
