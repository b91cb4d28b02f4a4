"""The compiled Avro writer gives fastavro's bytes for every record that fits, and refuses the
rest with the errors the codec turns into ``RecordError``."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.avro_writer import compile_writer
from schemas.codec import EXPOSURE, INTERACTION, Codec
from schemas.errors import RecordError
from tests.schemas.test_codec import interaction, packaged_schema, records

INTERACTION_SCHEMA = parse_schema(packaged_schema("interaction.v1.avsc"), named_schemas={})
EXPOSURE_SCHEMA = parse_schema(packaged_schema("exposure.v1.avsc"), named_schemas={})


def fastavro_bytes(schema: Any, record: Any) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schema, record, disable_tuple_notation=True)
    return out.getvalue()


def compiled(schema: Any) -> Any:
    encode = compile_writer(schema)
    assert encode is not None
    return encode


@settings(max_examples=300, deadline=None)
@given(records)
def test_interactions_encode_exactly_as_fastavro(record):
    assert compiled(INTERACTION_SCHEMA)(record) == fastavro_bytes(INTERACTION_SCHEMA, record)


exposures = st.fixed_dictionaries(
    {
        "recordId": st.binary(min_size=16, max_size=16),
        "namespace": st.text(),
        "receivedAt": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "partitionKeyField": st.sampled_from(["sessionId", "userId"]),
        "userId": st.text(),
        "sessionId": st.none() | st.text(),
        "action": st.text(),
        "recommender": st.text(),
        "feature": st.text(),
        "variation": st.text(),
        "recommendationId": st.none() | st.text(),
    }
)


@settings(max_examples=200, deadline=None)
@given(exposures)
def test_exposures_encode_exactly_as_fastavro(record):
    assert compiled(EXPOSURE_SCHEMA)(record) == fastavro_bytes(EXPOSURE_SCHEMA, record)


def test_missing_fields_take_their_defaults_as_in_fastavro():
    record = interaction()
    for field in ("userId", "eventList", "experimentConversions", "context"):
        del record[field]
    assert compiled(INTERACTION_SCHEMA)(record) == fastavro_bytes(INTERACTION_SCHEMA, record)


def test_every_primitive_encodes_as_in_fastavro():
    types = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
    schema = parse_schema(
        {"type": "record", "name": "P", "fields": [{"name": t, "type": t} for t in types]},
        named_schemas={},
    )
    for record in (
        {"null": None, "boolean": True, "int": -(2**31), "long": 2**63 - 1, "float": 1.5,
         "double": -0.1, "bytes": b"\x00\xff", "string": "héllo"},
        {"null": None, "boolean": False, "int": 2**31 - 1, "long": -(2**63), "float": -3,
         "double": 1e300, "bytes": b"", "string": ""},
    ):  # fmt: skip
        assert compiled(schema)(record) == fastavro_bytes(schema, record)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "int", "logicalType": "date"},
        ["null", "string", "long"],
        ["string", "long"],
    ],
)
def test_what_it_does_not_compile_is_left_to_fastavro(schema):
    parsed = parse_schema(
        {"type": "record", "name": "U", "fields": [{"name": "f", "type": schema}]},
        named_schemas={},
    )
    assert compile_writer(parsed) is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"eventList": "nope"},
        {"recordId": b"short"},
        {"partitionKeyField": "itemId"},
        {"receivedAt": 2**63},
        {"receivedAt": "1"},
        {"sessionId": None},
        {"sessionId": b"bytes"},
        {"context": {"ua": 1}},
        {"eventList": [{"eventType": "View", "sentAt": 1, "eventValue": "x"}]},
        {"eventList": [{"eventType": "View", "sentAt": 1, "eventValue": 1e39}]},
        {"eventList": [{"sentAt": 1}]},
        {"eventList": ["not a record"]},
    ],
)
def test_records_that_do_not_fit_are_refused(overrides):
    with pytest.raises(RecordError):
        Codec.packaged().encode(INTERACTION, interaction(**overrides))


def test_the_packaged_schemas_are_written_without_fastavro(monkeypatch):
    def unused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("fastavro's writer was used")

    monkeypatch.setattr("schemas.codec.schemaless_writer", unused)
    codec = Codec.packaged()
    record = interaction()
    assert codec.decode(codec.encode(INTERACTION, record)) == (INTERACTION, record)
    exposure = {
        "recordId": bytes(16),
        "namespace": "demo",
        "receivedAt": 1,
        "partitionKeyField": "userId",
        "userId": "u-1",
        "action": "recommend-items",
        "recommender": "for-you",
        "feature": "f",
        "variation": "v1",
    }
    assert codec.decode(codec.encode(EXPOSURE, exposure))[0] == EXPOSURE
