"""The kinesis-firehose target against moto server: delivery streams to S3, read back from S3.

moto's Firehose writes each PutRecordBatch to its S3 destination at once (one object per call,
the records' bytes concatenated), so the objects are read back from moto's S3 and parsed as
newline-delimited JSON. Per-entry failures come from ``tests.fixtures.firehose_proxy``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aws.clients import client
from consumers.base import Deferred
from consumers.targets import build_target
from consumers.targets.firehose import FirehoseTarget
from consumers.targets.jsonshape import sample_json
from schemas.errors import NotFound, PayloadTooLarge, RetryableError, Unavailable
from tests.consumers.json_target_records import (
    CONTEXT,
    deliveries,
    event,
    record,
    records_of,
    target_config,
)
from tests.fixtures.firehose_proxy import FirehoseFaultProxy


class Destination:
    """A delivery stream writing to its own bucket in moto."""

    def __init__(self, endpoint: str) -> None:
        self.s3 = client("s3", endpoint_url=endpoint, max_attempts=1)
        self.firehose = client("firehose", endpoint_url=endpoint, max_attempts=1)
        suffix = uuid.uuid4().hex[:10]
        self.bucket = f"firehose-{suffix}"
        self.stream = f"events-{suffix}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.firehose.create_delivery_stream(
            DeliveryStreamName=self.stream,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose",
                "BucketARN": f"arn:aws:s3:::{self.bucket}",
                "Prefix": "events/",
            },
        )

    def objects(self) -> list[bytes]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="events/")
        return [
            self.s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
            for item in listing.get("Contents", [])
        ]

    def documents(self) -> list[dict[str, Any]]:
        documents: list[dict[str, Any]] = []
        for data in self.objects():
            assert data.endswith(b"\n")
            documents.extend(json.loads(line) for line in data.splitlines())
        return documents

    def event_ids(self) -> list[str]:
        return sorted(d["body"]["eventList"][0]["eventId"] for d in self.documents())

    def close(self) -> None:
        self.firehose.delete_delivery_stream(DeliveryStreamName=self.stream)
        self.s3.close()
        self.firehose.close()


@pytest.fixture
def destination(moto_server: str) -> Iterator[Destination]:
    made = Destination(moto_server)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FirehoseFaultProxy]:
    made = FirehoseFaultProxy(moto_server)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def make_target() -> Iterator[Callable[..., FirehoseTarget]]:
    opened: list[FirehoseTarget] = []

    def make(endpoint: str, stream: str) -> FirehoseTarget:
        config = target_config("kinesis-firehose", streamName=stream, endpoint_url=endpoint)
        target = build_target(config, CONTEXT)
        assert isinstance(target, FirehoseTarget)
        target.open()
        opened.append(target)
        return target

    yield make
    for target in opened:
        target.close()


def by_record_id(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(documents, key=lambda d: str(d["recordId"]))


def test_records_land_in_s3_as_newline_delimited_json(
    moto_server: str, destination: Destination, make_target: Callable[..., FirehoseTarget]
) -> None:
    live = deliveries(
        [
            *records_of(["a", "b", "a"]),
            record("c", event("c-0", itemId="i9", eventValue=1.5), context={"al": "de-DE"}),
        ]
    )
    replayed = deliveries(records_of(["r"]), replay=True)
    batch = [*live, *replayed]
    target = make_target(moto_server, destination.stream)

    failures = target.deliver(batch)

    assert failures == {}
    [data] = destination.objects()  # one call, one object
    assert data.count(b"\n") == len(batch)
    expected = [sample_json(d.fields, replay=d.replay) for d in batch]
    assert by_record_id(destination.documents()) == by_record_id(expected)
    assert [d for d in destination.documents() if d.get("replay")] == [expected[-1]]


def test_calls_carry_at_most_500_records(
    moto_server: str,
    destination: Destination,
    proxy: FirehoseFaultProxy,
    make_target: Callable[..., FirehoseTarget],
) -> None:
    batch = deliveries(records_of([f"s{n % 50}" for n in range(1_100)]))
    target = make_target(proxy.url, destination.stream)

    failures = target.deliver(batch)

    assert failures == {}
    assert proxy.calls["PutRecordBatch"] == 3
    assert sorted(len(data.splitlines()) for data in destination.objects()) == [100, 500, 500]
    assert len(destination.event_ids()) == 1_100


def test_calls_stay_under_4_mib_and_a_record_over_1000_kib_is_refused(
    moto_server: str,
    destination: Destination,
    proxy: FirehoseFaultProxy,
    make_target: Callable[..., FirehoseTarget],
) -> None:
    def sized(session: str, chars: int) -> dict[str, Any]:
        return record(session, event(f"{session}-0", properties=json.dumps({"p": "x" * chars})))

    batch = deliveries([sized(f"k{n}", 900_000) for n in range(5)] + [sized("huge", 1_030_000)])
    target = make_target(proxy.url, destination.stream)

    failures = target.deliver(batch)

    # THEN 5 x 900 kB go in two calls (4 + 1), and the record over 1,000 KiB is dead-lettered
    assert list(failures) == [5]
    assert isinstance(failures[5], PayloadTooLarge)
    assert proxy.calls["PutRecordBatch"] == 2
    assert destination.event_ids() == [f"k{n}-0" for n in range(5)]


def test_failed_entries_are_retried_alone(
    moto_server: str,
    destination: Destination,
    proxy: FirehoseFaultProxy,
    make_target: Callable[..., FirehoseTarget],
) -> None:
    sessions = ["a", "b", "c", "d", "e"]
    batch = deliveries(records_of(sessions))
    proxy.fail_entries = {2, 4}
    target = make_target(proxy.url, destination.stream)

    failures = target.deliver(batch)

    assert sorted(failures) == [1, 3]
    for error in failures.values():
        assert isinstance(error, Unavailable)
        assert error.code == "ServiceUnavailableException"
    assert destination.event_ids() == ["a-0", "c-0", "e-0"]

    # WHEN the runner sends the failed records again
    assert target.deliver([batch[1], batch[3]]) == {}

    assert destination.event_ids() == ["a-0", "b-0", "c-0", "d-0", "e-0"]


def test_a_key_with_a_failed_entry_sends_nothing_more_in_the_batch(
    moto_server: str,
    destination: Destination,
    proxy: FirehoseFaultProxy,
    make_target: Callable[..., FirehoseTarget],
) -> None:
    # 500 records fill the first call; "a" fails in it and comes back in the second
    sessions = ["a", *(f"s{n}" for n in range(499)), "a", "b"]
    batch = deliveries(records_of(sessions))
    proxy.fail_entries = {1}
    target = make_target(proxy.url, destination.stream)

    failures = target.deliver(batch)

    assert sorted(failures) == [0, 500]
    assert isinstance(failures[0], Unavailable)
    assert isinstance(failures[500], Deferred)
    assert proxy.calls["PutRecordBatch"] == 2
    assert len(destination.event_ids()) == 500  # 499 + b-0


def test_a_failed_call_ends_the_batch(
    moto_server: str,
    destination: Destination,
    proxy: FirehoseFaultProxy,
    make_target: Callable[..., FirehoseTarget],
) -> None:
    proxy.fail_next("ServiceUnavailableException", status=500)
    batch = deliveries(records_of([f"s{n}" for n in range(600)]))
    target = make_target(proxy.url, destination.stream)

    failures = target.deliver(batch)

    assert len(failures) == 600
    assert all(isinstance(failures[i], Unavailable) for i in range(500))
    assert all(isinstance(failures[i], Deferred) for i in range(500, 600))
    assert all(isinstance(f, RetryableError) for f in failures.values())
    assert proxy.calls["PutRecordBatch"] == 1
    assert destination.objects() == []


def test_a_missing_delivery_stream_fails_every_record_permanently(
    moto_server: str, make_target: Callable[..., FirehoseTarget]
) -> None:
    target = make_target(moto_server, "no-such-stream")

    failures = target.deliver(deliveries(records_of(["a", "b", "a"])))

    assert set(failures) == {0, 1, 2}
    assert all(isinstance(f, NotFound) for f in failures.values())
