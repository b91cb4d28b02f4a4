"""The kinesis-stream target against kinesis-local, with the fault proxy where entries must fail.

Records are read back from the destination stream with GetRecords and compared with what was
delivered: the stream bytes themselves (avro) or the sample-json documents.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from consumers.base import Deferred, Delivery
from consumers.targets import build_target
from consumers.targets.jsonshape import sample_json
from consumers.targets.kinesis_stream import KinesisStreamTarget
from schemas.codec import INTERACTION
from schemas.errors import NotFound, PayloadTooLarge, RetryableError, Unavailable
from tests.consumers.json_target_records import (
    CODEC,
    CONTEXT,
    deliveries,
    event,
    record,
    records_of,
    target_config,
)
from tests.fixtures.kinesis_proxy import KinesisFaultProxy
from tests.fixtures.servers import kinesis_client

MakeStream = Callable[..., str]


@pytest.fixture
def make_target() -> Iterator[Callable[..., KinesisStreamTarget]]:
    opened: list[KinesisStreamTarget] = []

    def make(endpoint: str, stream: str, **options: Any) -> KinesisStreamTarget:
        config = target_config(
            "kinesis-stream", streamName=stream, endpoint_url=endpoint, **options
        )
        target = build_target(config, CONTEXT)
        assert isinstance(target, KinesisStreamTarget)
        target.open()
        opened.append(target)
        return target

    yield make
    for target in opened:
        target.close()


def read_back(endpoint: str, stream: str) -> list[tuple[str, bytes]]:
    """Every record of ``stream`` as ``(partition key, data)``, shard after shard."""
    kinesis = kinesis_client(endpoint)
    out: list[tuple[str, bytes]] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            out.extend((r["PartitionKey"], r["Data"]) for r in page["Records"])
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return out


def event_ids(endpoint: str, stream: str) -> list[str]:
    return [
        json.loads(data)["body"]["eventList"][0]["eventId"]
        for _, data in read_back(endpoint, stream)
    ]


# -- formats ------------------------------------------------------------------------------------


def test_sample_json_records_read_back_equal(
    kinesis_local: str,
    make_kinesis_stream: MakeStream,
    make_target: Callable[..., KinesisStreamTarget],
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=2)
    live = deliveries(records_of(["a", "b", "a", "c", "b", "a"]))
    replayed = deliveries([record("r", event("r-0"), userId="u9")], replay=True)
    batch = [*live, *replayed]
    target = make_target(kinesis_local, stream)

    failures = target.deliver(batch)

    assert failures == {}
    stored = read_back(kinesis_local, stream)
    expected = {
        (d.record.partition_key, json.dumps(sample_json(d.fields, replay=d.replay), sort_keys=True))
        for d in batch
    }
    got = {(key, json.dumps(json.loads(data), sort_keys=True)) for key, data in stored}
    assert len(stored) == len(batch)
    assert got == expected
    assert [json.loads(data).get("replay") for key, data in stored if key == "r"] == [True]
    # each key's records in their order (a key lives on one shard)
    for key in "abc":
        ids = [
            json.loads(data)["body"]["eventList"][0]["eventId"] for k, data in stored if k == key
        ]
        assert ids == [f"{key}-{n}" for n in range(len(ids))]


def test_avro_records_are_the_stream_bytes_unchanged(
    kinesis_local: str,
    make_kinesis_stream: MakeStream,
    make_target: Callable[..., KinesisStreamTarget],
) -> None:
    stream = make_kinesis_stream(kinesis_local)
    batch = deliveries(records_of(["a", "b", "a", "a", "c"]))
    target = make_target(kinesis_local, stream, format="avro")

    failures = target.deliver(batch)

    assert failures == {}
    stored = read_back(kinesis_local, stream)
    assert sorted(stored) == sorted((d.record.partition_key, d.record.data) for d in batch)
    assert [data for key, data in stored if key == "a"] == [
        d.record.data for d in batch if d.record.partition_key == "a"
    ]
    kind, fields = CODEC.decode(stored[0][1])
    assert kind == INTERACTION
    assert fields["namespace"] == "shop"


# -- calls --------------------------------------------------------------------------------------


def test_a_call_carries_at_most_one_record_per_key_and_500_records(
    kinesis_local: str,
    kinesis_fault_proxy: KinesisFaultProxy,
    make_kinesis_stream: MakeStream,
    make_target: Callable[..., KinesisStreamTarget],
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=4)
    # 620 keys once each, then one key three more times
    sessions = [f"s{n}" for n in range(620)] + ["s7", "s7", "s7"]
    batch = deliveries(records_of(sessions), replay=False)
    target = make_target(kinesis_fault_proxy.url, stream, format="avro")

    failures = target.deliver(batch)

    assert failures == {}
    # round 1: 620 keys in calls of 500 and 120; rounds 2-4: s7 alone
    assert kinesis_fault_proxy.calls["PutRecords"] == 5
    stored = read_back(kinesis_local, stream)
    assert len(stored) == len(batch)
    assert [d for k, d in stored if k == "s7"] == [
        d.record.data for d in batch if d.record.partition_key == "s7"
    ]


def test_calls_stay_under_5_mib_and_a_record_over_1_mib_is_refused(
    moto_server: str,
    make_kinesis_stream: MakeStream,
    make_target: Callable[..., KinesisStreamTarget],
) -> None:
    # moto, not kinesis-local: it enforces the 5 MB limit per call and takes megabytes fast
    stream = make_kinesis_stream(moto_server, shards=4)
    batch = deliveries(records_of([f"k{n}" for n in range(8)]))
    # the avro format sends record.data as it is: make it large
    big = [_with_data(d, bytes([n]) * 900_000) for n, d in enumerate(batch[:7])]
    too_big = _with_data(batch[7], b"x" * (1024 * 1024))
    proxy = KinesisFaultProxy(moto_server)  # counts the calls
    try:
        target = make_target(proxy.url, stream, format="avro")

        failures = target.deliver([*big, too_big])

        # THEN 7 x 900 kB go in two calls (5 + 2), and the record over 1 MiB is dead-lettered
        assert list(failures) == [7]
        assert isinstance(failures[7], PayloadTooLarge)
        assert proxy.calls["PutRecords"] == 2
    finally:
        proxy.close()
    stored = read_back(moto_server, stream)
    assert sorted(stored) == sorted((d.record.partition_key, d.record.data) for d in big)


# -- failures -----------------------------------------------------------------------------------


def test_failed_entries_and_their_keys_successors_are_retried_alone(
    kinesis_local: str,
    kinesis_fault_proxy: KinesisFaultProxy,
    make_kinesis_stream: MakeStream,
    make_target: Callable[..., KinesisStreamTarget],
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=2)
    sessions = ["a", "b", "c", "a", "b", "a", "d", "c"]
    batch = deliveries(records_of(sessions))
    # round 1 sends a-0 b-0 c-0 d-0 (entries 1-4): fail a-0 and d-0;
    # round 2 sends b-1 c-1 (entries 5-6): fail c-1
    kinesis_fault_proxy.fail_entries = {1, 4, 6}
    target = make_target(kinesis_fault_proxy.url, stream)

    failures = target.deliver(batch)

    # THEN only the failed entries are retryable, and a-1, a-2 wait behind a-0 unsent
    assert sorted(failures) == [0, 3, 5, 6, 7]
    for index in (0, 6, 7):  # a-0, d-0, c-1: InternalFailure
        assert isinstance(failures[index], Unavailable)
        assert failures[index].code == "InternalFailure"
    assert isinstance(failures[3], Deferred)
    assert isinstance(failures[5], Deferred)
    assert kinesis_fault_proxy.calls["PutRecords"] == 2
    assert sorted(event_ids(kinesis_local, stream)) == ["b-0", "b-1", "c-0"]

    # WHEN the runner sends the failed subset again, in order
    again = target.deliver([batch[i] for i in sorted(failures)])

    # THEN every key's records are stored in their order
    assert again == {}
    ids = event_ids(kinesis_local, stream)
    assert sorted(ids) == sorted(
        f"{s}-{sessions[: n + 1].count(s) - 1}" for n, s in enumerate(sessions)
    )
    for key in "abcd":
        assert [i for i in ids if i[0] == key] == [f"{key}-{n}" for n in range(sessions.count(key))]


def test_throttled_entries_are_retryable(
    kinesis_local: str,
    kinesis_fault_proxy: KinesisFaultProxy,
    make_kinesis_stream: MakeStream,
    make_target: Callable[..., KinesisStreamTarget],
) -> None:
    stream = make_kinesis_stream(kinesis_local)
    kinesis_fault_proxy.write_rate = 3  # one shard takes 3 records now
    target = make_target(kinesis_fault_proxy.url, stream)

    failures = target.deliver(deliveries(records_of(["a", "b", "c", "d", "e", "d"])))

    # THEN d-0 and e-0 are throttled, and d-1 waits behind d-0 unsent
    assert sorted(failures) == [3, 4, 5]
    assert [type(failures[i]).__name__ for i in (3, 4)] == ["Throttled", "Throttled"]
    assert failures[3].code == "ProvisionedThroughputExceededException"
    assert isinstance(failures[5], Deferred)
    assert kinesis_fault_proxy.throttled_entries == 2
    assert kinesis_fault_proxy.calls["PutRecords"] == 1


def test_a_failed_call_ends_the_batch(
    kinesis_local: str,
    kinesis_fault_proxy: KinesisFaultProxy,
    make_kinesis_stream: MakeStream,
    make_target: Callable[..., KinesisStreamTarget],
) -> None:
    stream = make_kinesis_stream(kinesis_local)
    kinesis_fault_proxy.fail_next("PutRecords", "InternalFailure", status=500)
    target = make_target(kinesis_fault_proxy.url, stream)

    failures = target.deliver(deliveries(records_of(["a", "b", "a"])))

    assert isinstance(failures[0], Unavailable)
    assert isinstance(failures[1], Unavailable)
    assert isinstance(failures[2], Deferred)
    assert all(isinstance(f, RetryableError) for f in failures.values())
    assert kinesis_fault_proxy.calls["PutRecords"] == 1
    assert read_back(kinesis_local, stream) == []


def test_a_missing_stream_fails_every_record_permanently(
    kinesis_local: str, make_target: Callable[..., KinesisStreamTarget]
) -> None:
    target = make_target(kinesis_local, "no-such-stream")

    failures = target.deliver(deliveries(records_of(["a", "a", "b"])))

    assert set(failures) == {0, 1, 2}
    assert all(isinstance(f, NotFound) for f in failures.values())


def _with_data(delivery: Delivery, data: bytes) -> Delivery:
    return replace(delivery, record=replace(delivery.record, data=data))
