"""Single-object encoding: round trips, schema evolution, and refusal of anything foreign."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import EXPOSURE, INTERACTION, MARKER, Codec
from schemas.errors import RecordError
from schemas.records import new_record_id


def packaged_schema(name: str) -> dict[str, Any]:
    text = (resources.files("schemas") / "avro" / name).read_text("utf-8")
    return json.loads(text)


def interaction(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "recordId": new_record_id(1_700_000_000_000),
        "namespace": "demo",
        "receivedAt": 1_700_000_000_000,
        "partitionKeyField": "sessionId",
        "sessionId": "s-1",
        "userId": "u-1",
        "eventList": [
            {
                "eventId": None,
                "eventType": "click",
                "eventValue": None,
                "itemId": "i-1",
                "impression": [],
                "properties": '{"deviceType":"Phone"}',
                "recommendationId": None,
                "sentAt": 1_700_000_000_000,
                "metricAttribution": None,
            }
        ],
        "experimentConversions": [],
        "context": {"ua": "curl/8"},
    }
    record.update(overrides)
    return record


def test_encoding_starts_with_marker_and_fingerprint():
    codec = Codec.packaged()
    data = codec.encode(INTERACTION, interaction())
    assert data[:2] == MARKER
    assert data[2:10] == codec.fingerprint(INTERACTION)


def test_interaction_and_exposure_round_trip():
    codec = Codec.packaged()
    record = interaction()
    assert codec.decode(codec.encode(INTERACTION, record)) == (INTERACTION, record)
    exposure = {
        "recordId": new_record_id(),
        "namespace": "demo",
        "receivedAt": 1,
        "partitionKeyField": "userId",
        "userId": "u-1",
        "sessionId": None,
        "action": "recommend-items",
        "recommender": "for-you",
        "feature": "f",
        "variation": "v1",
        "recommendationId": None,
    }
    assert codec.decode(codec.encode(EXPOSURE, exposure)) == (EXPOSURE, exposure)


def test_typical_one_event_record_is_small():
    codec = Codec.packaged()
    record = interaction(sessionId="3f2c1e9a8b7d4c6e9f0a1b2c3d4e5f60", userId="user-48213")
    # 10 bytes of header, 16 of record id, the rest is the data itself (no field names).
    assert len(codec.encode(INTERACTION, record)) <= 144


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "NotAvro"),
        (b'{"json": true}', "NotAvro"),
        (MARKER + b"\x00" * 8 + b"\x02", "UnknownSchema"),
    ],
)
def test_foreign_bytes_are_refused(data, code):
    with pytest.raises(RecordError) as caught:
        Codec.packaged().decode(data)
    assert caught.value.code == code


def test_truncated_and_padded_bodies_are_refused():
    codec = Codec.packaged()
    data = codec.encode(INTERACTION, interaction())
    for broken in (data[:-3], data + b"\x00\x00"):
        with pytest.raises(RecordError) as caught:
            codec.decode(broken)
        assert caught.value.code == "CorruptRecord"


def test_encoding_a_record_that_does_not_fit_is_a_record_error():
    with pytest.raises(RecordError):
        Codec.packaged().encode(INTERACTION, interaction(eventList="nope"))


def v2_interaction_schema() -> dict[str, Any]:
    """A later version: one field added with a default, one event field added."""
    schema = copy.deepcopy(packaged_schema("interaction.v1.avsc"))
    schema["fields"].append({"name": "tenant", "type": "string", "default": "default"})
    event = schema["fields"][6]["type"]["items"]
    event["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    return schema


def test_newer_reader_reads_records_written_with_the_older_schema():
    old = Codec([packaged_schema("interaction.v1.avsc")])
    new = Codec([packaged_schema("interaction.v1.avsc"), v2_interaction_schema()])
    name, fields = new.decode(old.encode(INTERACTION, interaction()))
    assert name == INTERACTION
    assert fields["tenant"] == "default"
    assert fields["eventList"][0]["channel"] is None
    assert fields["eventList"][0]["itemId"] == "i-1"


def test_older_reader_refuses_a_schema_it_has_never_seen():
    old = Codec([packaged_schema("interaction.v1.avsc")])
    new = Codec([packaged_schema("interaction.v1.avsc"), v2_interaction_schema()])
    record = interaction(tenant="t-9")
    with pytest.raises(RecordError) as caught:
        old.decode(new.encode(INTERACTION, record))
    assert caught.value.code == "UnknownSchema"


text = st.text(max_size=40)
optional_text = st.none() | st.text(min_size=1, max_size=40)
events = st.fixed_dictionaries(
    {
        "eventId": optional_text,
        "eventType": st.text(min_size=1, max_size=20),
        "eventValue": st.none() | st.floats(width=32, allow_nan=False),
        "itemId": optional_text,
        "impression": st.lists(text, max_size=5),
        "properties": optional_text,
        "recommendationId": optional_text,
        "sentAt": st.integers(min_value=0, max_value=2**62),
        "metricAttribution": st.none() | st.fixed_dictionaries({"eventAttributionSource": text}),
    }
)
records = st.fixed_dictionaries(
    {
        "recordId": st.binary(min_size=16, max_size=16),
        "namespace": text,
        "receivedAt": st.integers(min_value=0, max_value=2**62),
        "partitionKeyField": st.sampled_from(["sessionId", "userId"]),
        "sessionId": text,
        "userId": optional_text,
        "eventList": st.lists(events, max_size=10),
        "experimentConversions": st.lists(
            st.fixed_dictionaries(
                {
                    "recommender": text,
                    "feature": text,
                    "metric": text,
                    "value": st.none() | st.floats(allow_nan=False),
                }
            ),
            max_size=3,
        ),
        "context": st.dictionaries(st.text(max_size=5), text, max_size=5),
    }
)


@settings(max_examples=200, deadline=None)
@given(records)
def test_any_valid_record_round_trips(record):
    codec = Codec.packaged()
    assert codec.decode(codec.encode(INTERACTION, record)) == (INTERACTION, record)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_record_error(data):
    codec = Codec.packaged()
    try:
        name, fields = codec.decode(MARKER + codec.fingerprint(INTERACTION) + data)
    except RecordError:
        return
    assert name == INTERACTION and isinstance(fields, dict)
