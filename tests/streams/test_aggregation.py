"""The KPL aggregated record format: packing limits, order, and unpacking foreign bytes."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from aws_kinesis_agg.aggregator import AggRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import PayloadTooLarge
from streams.aggregation import MAGIC, pack, pack_head, single_size, unpack
from streams.base import Entry
from streams.hashing import hash_key


def entries_of(count: int, keys: int, size: int = 150) -> list[Entry]:
    return [Entry(f"session-{i % keys}", os.urandom(size)) for i in range(count)]


def unpacked(aggregates: list) -> list[tuple[str, bytes]]:
    out = []
    for aggregate in aggregates:
        records = unpack(aggregate.data)
        assert records is not None
        assert len(records) == aggregate.count
        out.extend((key, data) for key, _, data in records)
    return out


def test_pack_round_trips_in_order_and_routes_by_first_key() -> None:
    entries = entries_of(1000, keys=37)

    aggregates = pack(entries)

    assert len(aggregates) == 1
    assert unpacked(aggregates) == [(e.partition_key, e.data) for e in entries]
    assert aggregates[0].partition_key == "session-0"
    assert aggregates[0].explicit_hash_key == str(hash_key("session-0"))


def test_pack_splits_at_max_bytes_counting_the_partition_key() -> None:
    entries = [Entry("k" * 200, bytes([i]) * 100) for i in range(50)]

    aggregates = pack(entries, max_bytes=1000)

    assert len(aggregates) > 5
    assert all(a.size <= 1000 for a in aggregates)
    assert all(a.size == len(a.data) + 200 for a in aggregates)
    # as full as the limit allows: one more entry would not have fitted
    assert all(a.size + 100 > 1000 - 200 for a in aggregates[:-1])
    assert unpacked(aggregates) == [(e.partition_key, e.data) for e in entries]


def test_pack_head_packs_the_longest_prefix_that_fits() -> None:
    entries = entries_of(20, keys=3, size=100)

    head = pack_head(entries, max_bytes=600)

    assert 1 <= head.count < 20
    assert unpacked([head]) == [(e.partition_key, e.data) for e in entries[: head.count]]


def test_single_size_is_exact() -> None:
    for entry in (Entry("k", b""), Entry("é" * 100, b"x" * 300), Entry("key", b"y" * 70_000)):
        assert single_size(entry) == pack([entry])[0].size


def test_an_entry_larger_than_an_aggregate_is_rejected() -> None:
    with pytest.raises(PayloadTooLarge):
        pack([Entry("k", b"x" * 2000)], max_bytes=1000)
    with pytest.raises(ValueError):
        pack([Entry("k", b"x")], max_bytes=2 * 1024 * 1024)


def framed(body: bytes) -> bytes:
    return MAGIC + body + hashlib.md5(body).digest()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain bytes",
        b"\xc3\x01" + os.urandom(40),  # an Avro single-object record
        MAGIC,
        MAGIC + os.urandom(40),  # magic, wrong digest
        framed(b"\xff\xff\xff\xff"),  # right digest, not a protobuf
        framed(b""),  # a valid but empty AggregatedRecord
        framed(b"\x1a\x04\x08\x05\x1a\x00"),  # record points at partition key 5 of none
        framed(b"\x1a\x02\x1a\x00"),  # record without its required partition key index
    ],
)
def test_unpack_returns_none_for_anything_but_an_aggregate(data: bytes) -> None:
    assert unpack(data) is None


def test_unpack_reads_explicit_hash_keys_from_the_library_format() -> None:
    record = AggRecord()
    record.add_user_record("a", b"1", "12345")
    record.add_user_record("b", b"2")
    record.add_user_record("c", b"3", "not a number")
    _, _, data = record.get_contents()

    assert unpack(data) == [("a", 12345, b"1"), ("b", None, b"2"), ("c", None, b"3")]


keys = st.text(min_size=1, max_size=64)
entry_lists = st.lists(
    st.builds(Entry, partition_key=keys, data=st.binary(max_size=500)), min_size=1, max_size=60
)


@settings(deadline=None, max_examples=200)
@given(entries=entry_lists, max_bytes=st.integers(min_value=2000, max_value=1_000_000))
def test_any_entries_pack_and_unpack_to_the_same_sequence(
    entries: list[Entry], max_bytes: int
) -> None:
    aggregates = pack(entries, max_bytes=max_bytes)

    assert all(a.size <= max_bytes for a in aggregates)
    assert unpacked(aggregates) == [(e.partition_key, e.data) for e in entries]


@settings(deadline=None, max_examples=300)
@given(data=st.binary(max_size=300))
def test_garbage_never_raises_and_is_not_an_aggregate(data: bytes) -> None:
    if not data.startswith(MAGIC):
        assert unpack(data) is None
    framed_result = unpack(framed(data))  # digest right, body arbitrary: parse or None
    assert framed_result is None or all(isinstance(r[2], bytes) for r in framed_result)


def test_pack_speed_for_ten_thousand_entries() -> None:
    entries = entries_of(10_000, keys=200)

    started = time.perf_counter()
    aggregates = pack(entries)
    seconds = time.perf_counter() - started

    print(
        f"pack: 10,000 entries of 150 B in {seconds * 1000:.0f} ms -> {len(aggregates)} aggregates"
    )
    assert sum(a.count for a in aggregates) == 10_000
    assert seconds < 5.0  # ~0.07 s measured; only a pathological slowdown fails this
