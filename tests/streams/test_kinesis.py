"""The Kinesis writer and reader against real servers: kinesis-local and moto.

kinesis-local never fails single entries on its own (see tests/fixtures/kinesis_proxy.py), so
throttling and per-entry failures come from a fault proxy in front of it; everything else talks
to the emulators directly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from aws.clients import client
from schemas.errors import InvalidRequest, NotFound, PayloadTooLarge, Throttled, Unavailable
from streams.aggregation import MAGIC, pack, unpack
from streams.base import Entry, Position, Shard, UserRecord, Written
from streams.hashing import hash_key
from streams.kinesis import KinesisReader, KinesisWriter
from tests.fixtures.kinesis_proxy import KinesisFaultProxy
from tests.fixtures.servers import free_port, kinesis_client, wait_until

MakeStream = Callable[..., str]


def numbered(count: int, keys: int, tag: str = "") -> list[Entry]:
    """Entry i goes to key i % keys; its data says which key and which position in that key."""
    return [
        Entry(f"user-{i % keys}", f"{tag}{i % keys}:{i // keys:05d}".encode()) for i in range(count)
    ]


def by_key(items: Sequence[Entry] | Sequence[UserRecord]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for item in items:
        out[item.partition_key].append(item.data)
    return dict(out)


def write_all(
    writer: KinesisWriter, entries: list[Entry], batch: int = 500
) -> tuple[list[Written], list[Any]]:
    written: list[Written] = []
    stats = []
    for start in range(0, len(entries), batch):
        w, s = writer.put_batch(entries[start : start + batch])
        written.extend(w)
        stats.append(s)
    return written, stats


def read_shard(
    reader: KinesisReader, shard_id: str, after: Position | None = None, limit: int = 1000
) -> tuple[list[UserRecord], bool]:
    """Everything after ``after``: to the end of a closed shard, or until an open one is caught
    up (an empty read with no lag). Returns the records and whether the shard ended."""
    cursor = reader.open(shard_id, after)
    records: list[UserRecord] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = cursor.read(limit)
        records.extend(batch.records)
        if batch.end_of_shard:
            return records, True
        if not batch.records and batch.millis_behind_latest == 0:
            return records, False
    pytest.fail(f"shard {shard_id} did not catch up in 30s")


def read_stream(reader: KinesisReader) -> list[UserRecord]:
    """Every shard, parents before children."""
    shards = reader.list_shards()
    done: set[str] = set()
    records: list[UserRecord] = []
    while len(done) < len(shards):
        for shard in shards:
            if shard.shard_id not in done and set(shard.parent_ids) <= done:
                records.extend(read_shard(reader, shard.shard_id)[0])
                done.add(shard.shard_id)
    return records


def raw_records(kinesis: Any, stream: str, shard_id: str) -> list[dict[str, Any]]:
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    out: list[dict[str, Any]] = []
    while iterator:
        page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
        out.extend(page["Records"])
        if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
            break
        iterator = page.get("NextShardIterator")
    return out


def contains(shard: Shard, key: str) -> bool:
    return shard.starting_hash_key <= hash_key(key) <= shard.ending_hash_key


# -- writing and reading back -------------------------------------------------------------------


def test_aggregated_round_trip_on_four_shards(
    kinesis_local: str, make_kinesis_stream: MakeStream
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=4)
    kinesis = kinesis_client(kinesis_local)
    reader = KinesisReader(kinesis, stream)
    entries = numbered(2000, keys=200)

    written, stats = write_all(KinesisWriter(kinesis, stream), entries)

    assert len(written) == 2000
    assert [s.calls for s in stats] == [1, 1, 1, 1]  # one PutRecords per batch of 500
    stream_records = sum(s.stream_records for s in stats)
    assert stream_records <= 16  # one aggregate per shard per batch
    raw_count = 0
    for shard in reader.list_shards():
        for item in raw_records(kinesis, stream, shard.shard_id):
            raw_count += 1
            user_records = unpack(item["Data"])
            assert user_records is not None
            assert all(contains(shard, key) for key, _, _ in user_records)
    print(f"\n2,000 user records -> {raw_count} Kinesis records ({stream_records} written)")
    assert raw_count == stream_records
    records = read_stream(reader)
    assert by_key(records) == by_key(entries)
    assert {(r.shard_id, r.sequence_number) for r in records} == {
        (w.shard_id, w.sequence_number) for w in written
    }
    assert all(r.arrival_ms > 0 for r in records)


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregated", "plain"])
def test_round_trip_on_moto(
    moto_server: str, make_kinesis_stream: MakeStream, aggregate: bool
) -> None:
    stream = make_kinesis_stream(moto_server, shards=2)
    kinesis = kinesis_client(moto_server)
    entries = numbered(300, keys=30)

    written, stats = write_all(KinesisWriter(kinesis, stream, aggregate=aggregate), entries, 100)

    assert len(written) == 300
    assert sum(s.stream_records for s in stats) == (6 if aggregate else 300)
    records = read_stream(KinesisReader(kinesis, stream))
    assert by_key(records) == by_key(entries)
    assert any(r.sub_sequence > 0 for r in records) == aggregate


# -- failures and retries -----------------------------------------------------------------------


def test_plain_records_past_the_shard_limit_are_retried_in_key_order(
    kinesis_local: str, make_kinesis_stream: MakeStream, kinesis_fault_proxy: KinesisFaultProxy
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    kinesis_fault_proxy.write_rate = 250.0  # records/s: below what the emulator itself takes
    writer = KinesisWriter(
        kinesis_client(kinesis_fault_proxy.url), stream, aggregate=False, deadline_seconds=60
    )
    entries = numbered(1000, keys=250)

    written, stats = write_all(writer, entries)

    assert len(written) == 1000
    assert kinesis_fault_proxy.throttled_entries > 0
    assert sum(s.stream_records for s in stats) == 1000
    print(
        f"\nthrottled entries retried: {kinesis_fault_proxy.throttled_entries}, calls: {sum(s.calls for s in stats)}"
    )
    records = read_stream(KinesisReader(kinesis_client(kinesis_local), stream))
    assert len(records) == 1000
    assert by_key(records) == by_key(entries)  # nothing lost, nothing twice, order per key


def test_failed_aggregates_are_retried_before_anything_later_for_their_shard(
    kinesis_local: str, make_kinesis_stream: MakeStream, kinesis_fault_proxy: KinesisFaultProxy
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    kinesis_fault_proxy.fail_entries = {1, 2}  # the first aggregate fails twice
    writer = KinesisWriter(kinesis_client(kinesis_fault_proxy.url), stream, deadline_seconds=30)
    # ~1.2 MB for one shard: two aggregates, and the second must wait for the first
    entries = [Entry(e.partition_key, e.data + b"." * 15_000) for e in numbered(80, keys=20)]

    written, stats = writer.put_batch(entries)

    assert len(written) == 80
    assert (stats.calls, stats.stream_records) == (4, 2)
    assert kinesis_fault_proxy.failed_entries == 2
    records = read_stream(KinesisReader(kinesis_client(kinesis_local), stream))
    assert by_key(records) == by_key(entries)
    assert [r.data for r in records] == [e.data for e in entries]  # one shard: total order


def test_failed_calls_are_retried(
    kinesis_local: str, make_kinesis_stream: MakeStream, kinesis_fault_proxy: KinesisFaultProxy
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=2)
    kinesis_fault_proxy.fail_next("PutRecords", "InternalFailure", status=500)
    kinesis_fault_proxy.fail_next("PutRecords", "ProvisionedThroughputExceededException")
    kinesis_fault_proxy.fail_next("PutRecords", "ServiceUnavailable", status=503)
    writer = KinesisWriter(kinesis_client(kinesis_fault_proxy.url), stream, deadline_seconds=30)

    written, stats = writer.put_batch(numbered(50, keys=5))

    assert len(written) == 50
    assert stats.calls == 4
    assert stats.stream_records == len({w.shard_id for w in written})


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ProvisionedThroughputExceededException", 400, Throttled),
        ("InternalFailure", 500, Unavailable),
    ],
)
def test_retries_stop_at_the_deadline(
    kinesis_local: str,
    make_kinesis_stream: MakeStream,
    kinesis_fault_proxy: KinesisFaultProxy,
    code: str,
    status: int,
    expected: type[Exception],
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    kinesis_fault_proxy.fail_next("PutRecords", code, status=status, times=10_000)
    writer = KinesisWriter(kinesis_client(kinesis_fault_proxy.url), stream, deadline_seconds=0.5)

    started = time.monotonic()
    with pytest.raises(expected):
        writer.put_batch(numbered(10, keys=2))

    assert time.monotonic() - started < 2.0
    assert kinesis_fault_proxy.calls["PutRecords"] > 1


def test_permanent_errors_are_raised_at_once(
    kinesis_local: str, make_kinesis_stream: MakeStream
) -> None:
    kinesis = kinesis_client(kinesis_local)
    with pytest.raises(NotFound):
        KinesisWriter(kinesis, "no-such-stream").put_batch(numbered(1, keys=1))

    stream = make_kinesis_stream(kinesis_local, shards=1)
    writer = KinesisWriter(kinesis, stream)
    with pytest.raises(PayloadTooLarge):
        writer.put_batch([Entry("a", b"small"), Entry("b", b"x" * 1_000_000)])
    with pytest.raises(InvalidRequest):
        writer.put_batch([Entry("", b"x")])
    with pytest.raises(InvalidRequest):
        writer.put_batch([Entry("k" * 257, b"x")])
    assert read_shard(KinesisReader(kinesis, stream), "shardId-000000000000")[0] == []


# -- resharding ---------------------------------------------------------------------------------


def test_writer_follows_a_shard_split(kinesis_local: str, make_kinesis_stream: MakeStream) -> None:
    # kinesis-local splits correctly (parent closed, writes go to children); moto keeps
    # writing to the closed parent, so this runs on kinesis-local only.
    stream = make_kinesis_stream(kinesis_local, shards=2)
    kinesis = kinesis_client(kinesis_local)
    reader = KinesisReader(kinesis, stream)
    writer = KinesisWriter(kinesis, stream, shard_refresh_seconds=3600)
    batches = [numbered(300, keys=100, tag=f"{b}/") for b in range(3)]

    writer.put_batch(batches[0])
    parent = reader.list_shards()[0]
    middle = (parent.starting_hash_key + parent.ending_hash_key) // 2
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent.shard_id, NewStartingHashKey=str(middle)
    )
    wait_until(
        lambda: (
            kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            == "ACTIVE"
        ),
        15.0,
        "the split to finish",
    )
    second, _ = writer.put_batch(batches[1])  # routed by the old map; Kinesis knows better
    third, _ = writer.put_batch(batches[2])  # routed by the refreshed map

    shards = {s.shard_id: s for s in reader.list_shards()}
    children = sorted(s.shard_id for s in shards.values() if s.parent_ids == (parent.shard_id,))
    assert len(children) == 2
    assert shards[parent.shard_id].closed
    assert not any(shards[c].closed for c in children)
    assert parent.shard_id not in {w.shard_id for w in second + third}
    # the batch routed by the old map landed whole on one child, keys of its sibling included
    assert any(
        not contains(shards[w.shard_id], e.partition_key)
        for e, w in zip(batches[1], second, strict=True)
    )
    for entry, where in zip(batches[2], third, strict=True):
        assert contains(shards[where.shard_id], entry.partition_key)

    parent_records, ended = read_shard(reader, parent.shard_id)
    assert ended
    records = read_stream(reader)
    everything = [e for batch in batches for e in batch]
    assert sorted(r.data for r in records) == sorted(e.data for e in everything)
    assert parent_records and all(r.data.startswith(b"0/") for r in parent_records)
    # per key, order holds within every shard, and the parent's records come first
    order = {e.data: i for i, e in enumerate(everything)}
    for shard_id in shards:
        positions = by_key([r for r in records if r.shard_id == shard_id])
        for datas in positions.values():
            assert [order[d] for d in datas] == sorted(order[d] for d in datas)
    for key, datas in by_key(parent_records).items():
        later = [
            order[r.data] for r in records if r.partition_key == key and r.shard_id in children
        ]
        assert max(order[d] for d in datas) < min(later, default=len(order))


# -- reading ------------------------------------------------------------------------------------


def test_reader_resumes_inside_an_aggregate(
    kinesis_local: str, make_kinesis_stream: MakeStream
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    kinesis = kinesis_client(kinesis_local)
    writer = KinesisWriter(kinesis, stream)
    writer.put_batch(numbered(10, keys=3, tag="a"))
    writer.put_batch(numbered(4, keys=3, tag="b"))
    reader = KinesisReader(kinesis, stream)
    shard = "shardId-000000000000"

    records, _ = read_shard(reader, shard)

    assert [r.sub_sequence for r in records] == [*range(10), *range(4)]
    assert len({r.sequence_number for r in records}) == 2
    for cut in (0, 4, 9, 12, 13):
        rest, _ = read_shard(reader, shard, after=records[cut].position)
        assert [r.data for r in rest] == [r.data for r in records[cut + 1 :]]


def test_reader_at_end_sees_only_new_records(
    kinesis_local: str, make_kinesis_stream: MakeStream, kinesis_fault_proxy: KinesisFaultProxy
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    writer = KinesisWriter(kinesis_client(kinesis_local), stream)
    writer.put_batch(numbered(3, keys=1, tag="old"))
    reader = KinesisReader(kinesis_client(kinesis_fault_proxy.url), stream)
    cursor = reader.open("shardId-000000000000", at_end=True)
    writer.put_batch(numbered(2, keys=1, tag="new"))  # after open, before the first read

    assert [r.data for r in cursor.read().records] == [b"new0:00000", b"new0:00001"]

    renewed = reader.open("shardId-000000000000", at_end=True)
    writer.put_batch(numbered(1, keys=1, tag="newer"))
    kinesis_fault_proxy.fail_next("GetRecords", "ExpiredIteratorException")
    # renewed from the open time (AT_TIMESTAMP): not from LATEST, which would miss "newer"
    assert [r.data for r in renewed.read().records] == [b"newer0:00000"]


def test_read_limit_counts_user_records(
    kinesis_local: str, make_kinesis_stream: MakeStream
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    kinesis = kinesis_client(kinesis_local)
    KinesisWriter(kinesis, stream).put_batch(numbered(10, keys=2))
    cursor = KinesisReader(kinesis, stream).open("shardId-000000000000")

    sizes = [len(cursor.read(limit=3).records) for _ in range(5)]

    assert sizes == [3, 3, 3, 1, 0]


def test_reader_delivers_plain_foreign_and_out_of_range_records(
    kinesis_local: str, make_kinesis_stream: MakeStream
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=2)
    kinesis = kinesis_client(kinesis_local)
    reader = KinesisReader(kinesis, stream)
    first, second = reader.list_shards()
    keys = [f"user-{i}" for i in range(20)]
    assert any(contains(second, k) for k in keys)
    aggregate = pack([Entry(k, k.encode()) for k in keys])[0]
    pin = {"ExplicitHashKey": str(first.starting_hash_key)}

    kinesis.put_record(StreamName=stream, PartitionKey="p", Data=b"\xc3\x01avro", **pin)
    kinesis.put_record(StreamName=stream, PartitionKey="q", Data=MAGIC + b"not really", **pin)
    kinesis.put_record(
        StreamName=stream, PartitionKey=aggregate.partition_key, Data=aggregate.data, **pin
    )
    records, _ = read_shard(reader, first.shard_id)

    assert [(r.partition_key, r.data, r.sub_sequence) for r in records] == [
        ("p", b"\xc3\x01avro", 0),
        ("q", MAGIC + b"not really", 0),
        *[(k, k.encode(), i) for i, k in enumerate(keys)],
    ]


def test_expired_iterator_is_renewed_once(
    kinesis_local: str, make_kinesis_stream: MakeStream, kinesis_fault_proxy: KinesisFaultProxy
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    writer = KinesisWriter(kinesis_client(kinesis_local), stream)
    writer.put_batch(numbered(5, keys=1, tag="a"))
    writer.put_batch(numbered(5, keys=1, tag="b"))
    cursor = KinesisReader(kinesis_client(kinesis_fault_proxy.url), stream).open(
        "shardId-000000000000"
    )
    first = [r for _ in range(5) for r in cursor.read(limit=1).records]  # one aggregate fetched

    kinesis_fault_proxy.fail_next("GetRecords", "ExpiredIteratorException")
    second = cursor.read(limit=100).records

    assert [r.data for r in first + list(second)] == [
        e.data for e in numbered(5, keys=1, tag="a") + numbered(5, keys=1, tag="b")
    ]
    assert kinesis_fault_proxy.calls["GetShardIterator"] == 2
    kinesis_fault_proxy.fail_next("GetRecords", "ExpiredIteratorException", times=2)
    with pytest.raises(Unavailable) as caught:
        cursor.read()
    assert caught.value.code == "ExpiredIterator"


def test_read_throttling_is_raised_for_the_consumer_to_back_off(
    kinesis_local: str, make_kinesis_stream: MakeStream, kinesis_fault_proxy: KinesisFaultProxy
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    KinesisWriter(kinesis_client(kinesis_local), stream).put_batch(numbered(3, keys=1))
    cursor = KinesisReader(kinesis_client(kinesis_fault_proxy.url), stream).open(
        "shardId-000000000000"
    )

    kinesis_fault_proxy.fail_next("GetRecords", "ProvisionedThroughputExceededException")
    with pytest.raises(Throttled):
        cursor.read()

    assert len(cursor.read().records) == 3


# -- check --------------------------------------------------------------------------------------


def test_check(kinesis_local: str, make_kinesis_stream: MakeStream) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=1)
    KinesisWriter(kinesis_client(kinesis_local), stream).check()

    with pytest.raises(NotFound):
        KinesisWriter(kinesis_client(kinesis_local), "no-such-stream").check()


def test_check_fails_fast_when_nothing_listens(aws_test_env: None) -> None:
    # the production defaults: two attempts, 2 s connect timeout
    writer = KinesisWriter(client("kinesis", endpoint_url=f"http://127.0.0.1:{free_port()}"), "s")

    started = time.monotonic()
    with pytest.raises(Unavailable):
        writer.check()

    assert time.monotonic() - started < 3.0
