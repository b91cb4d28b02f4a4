"""The archive target: layout, rolling, atomic files, crash recovery — on disk and on S3 (moto)."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

import consumers.storage
from aws.clients import client
from consumers.targets import TargetContext
from consumers.targets.archive import STAGING, ArchiveTarget
from schemas.config import TargetConfig
from schemas.errors import RetryableError, Unavailable
from tests.consumers.archive_records import (
    BASE_MS,
    CODEC,
    HOUR_MS,
    Shards,
    delivery,
    exposure,
    interaction,
    make_config,
    runner_batches,
    synthetic,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def archive_target(
    tmp_path: Path,
    clock: Clock | None = None,
    endpoint_url: str | None = None,
    recover_after: float | None = None,
    **options: Any,
) -> ArchiveTarget:
    options.setdefault("uri", f"file://{tmp_path}/archive")
    config = make_config(str(tmp_path / "data"), [{"type": "interactions"}])
    target_config = TargetConfig("archive", "archive", "shop", options, endpoint_url=endpoint_url)
    return ArchiveTarget(
        target_config,
        TargetContext(config, CODEC),
        clock=clock or Clock(),
        recover_after=recover_after,
    )


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def final_files(root: Path) -> list[str]:
    return [name for name in files_under(root) if not name.startswith(STAGING)]


def entries(data: bytes | io.BufferedReader) -> list[dict[str, Any]]:
    handle = io.BytesIO(data) if isinstance(data, bytes) else data
    return list(fastavro.reader(handle))  # type: ignore[arg-type]


def archived(root: Path) -> list[dict[str, Any]]:
    found = []
    for name in final_files(root):
        with open(root / name, "rb") as handle:
            found.extend(entries(handle))  # type: ignore[arg-type]
    return found


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_layout_rolling_and_round_trip(tmp_path: Path, codec: str) -> None:
    # GIVEN records of two shards on both sides of an hour boundary
    clock = Clock()
    target = archive_target(tmp_path, clock, rollSeconds=60, codec=codec)
    root = tmp_path / "archive"
    shards = Shards()
    deliveries = [
        delivery(shards, interaction(n, BASE_MS + 59 * 60_000 + n * 1000, f"s{n % 10}"), 2)
        for n in range(120)
    ]
    by_shard: dict[str, list[Any]] = {}
    for item in deliveries:
        by_shard.setdefault(item.record.shard_id, []).append(item)
    (shard_a, a), (_, b) = sorted(by_shard.items())
    target.open()

    # WHEN the first shard's records come in two batches, 30 s apart
    assert target.deliver(a[:20]) == {}
    clock.now += 30
    assert target.deliver(a[20:]) == {}
    # THEN they are durable in staging, and no final file exists yet
    assert final_files(root) == []
    assert all(name.startswith(STAGING) for name in files_under(root))

    # WHEN a batch arrives 61 s after the first: the file opened then (hour 00) rolls; the
    # hour-01 file, opened by the second batch, and the new batch's files don't
    clock.now += 31
    assert target.deliver(b) == {}
    assert final_files(root) == [
        f"namespace=shop/dt=2026-01-01/hour=00/{shard_a}-{a[0].record.sequence_number}-0.avro"
    ]
    target.close()

    # THEN one file per (hour, shard), named after its first record, staging left empty
    assert len(final_files(root)) == 4
    assert not (root / STAGING).exists() or files_under(root / STAGING) == []
    for name in final_files(root):
        part = root / name
        with open(part, "rb") as handle:
            reader = fastavro.reader(handle)
            assert reader.metadata["avro.codec"] == codec
            content = list(reader)
        hour = int(name.split("hour=")[1][:2])
        assert all(
            BASE_MS + hour * HOUR_MS <= e["receivedAtMs"] < BASE_MS + (hour + 1) * HOUR_MS
            for e in content
        )
        first = content[0]
        assert part.name == f"{first['shardId']}-{first['sequenceNumber']}-0.avro"
        sequences = [int(e["sequenceNumber"]) for e in content]
        assert sequences == sorted(sequences)

    # AND every record round-trips: envelope and the exact original bytes
    by_id = {e["recordId"]: e for e in archived(root)}
    assert len(by_id) == len(deliveries) == len(archived(root))
    for item in deliveries:
        entry = by_id[item.fields["recordId"]]
        assert entry["data"] == item.record.data
        assert CODEC.decode(entry["data"]) == ("p13n.records.Interaction", item.fields)
        assert (entry["shardId"], entry["sequenceNumber"], entry["subSequence"]) == (
            item.record.shard_id,
            item.record.sequence_number,
            0,
        )
        assert entry["partitionKey"] == item.record.partition_key
        assert entry["arrivalMs"] == item.record.arrival_ms
        assert entry["receivedAtMs"] == item.fields["receivedAt"]
        assert (entry["namespace"], entry["kind"]) == ("shop", "p13n.records.Interaction")


def test_exposures_are_archived_too(tmp_path: Path) -> None:
    target = archive_target(tmp_path)
    shards = Shards()
    items = [delivery(shards, exposure(n, BASE_MS + n, f"u{n}"), 1) for n in range(5)]
    target.open()
    target.deliver(items)
    target.close()
    content = archived(tmp_path / "archive")
    assert [e["kind"] for e in content] == ["p13n.records.Exposure"] * 5
    assert [e["data"] for e in content] == [d.record.data for d in items]


def test_roll_bytes_bounds_files_and_splits_large_batches(tmp_path: Path) -> None:
    target = archive_target(tmp_path, rollBytes=8192, codec="null")
    deliveries = synthetic(600, BASE_MS, 60_000, sessions=1, shard_count=1)
    target.open()
    target.deliver(deliveries[:100])  # small batches, then one far larger than rollBytes
    target.deliver(deliveries[100:150])
    target.deliver(deliveries[150:])
    target.close()
    root = tmp_path / "archive"
    names = final_files(root)
    assert len(names) > 5
    # One file's worth of records never exceeds rollBytes (plus the one Avro header).
    assert max(os.path.getsize(root / n) for n in names) <= 8192 + 1024
    content = archived(root)
    assert [e["recordId"] for e in content] == [d.fields["recordId"] for d in deliveries]


def test_replayed_records_are_not_archived_again(tmp_path: Path) -> None:
    target = archive_target(tmp_path)
    shards = Shards()
    replayed = [
        delivery(shards, interaction(n, BASE_MS + n, "s1"), 1, replay=True) for n in range(10)
    ]
    target.open()
    # GIVEN only replayed records THEN they are reported delivered and nothing is written
    assert target.deliver(replayed) == {}
    assert files_under(tmp_path) == [] or final_files(tmp_path / "archive") == []
    assert not (tmp_path / "archive").exists() or files_under(tmp_path / "archive") == []
    # GIVEN a mix THEN only the live records are archived
    live = [delivery(shards, interaction(n, BASE_MS + n, "s1"), 1) for n in range(10, 15)]
    assert target.deliver(replayed[:3] + live) == {}
    target.close()
    assert [e["recordId"] for e in archived(tmp_path / "archive")] == [
        d.fields["recordId"] for d in live
    ]


def test_files_appear_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a watch on every fsync: which names exist while bytes are being made durable
    seen_while_writing: list[str] = []
    real_fsync = os.fsync

    def watching_fsync(descriptor: int) -> None:
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        if os.path.isfile(path):
            seen_while_writing.append(os.path.basename(path))
        real_fsync(descriptor)

    monkeypatch.setattr(consumers.storage.os, "fsync", watching_fsync)
    target = archive_target(tmp_path, rollSeconds=60)
    deliveries = synthetic(50, BASE_MS, 1000, shard_count=1)
    target.open()
    target.deliver(deliveries)
    target.close()
    # THEN bytes are only ever written under hidden temporary names that no reader scans for
    assert seen_while_writing
    assert all(n.startswith(".") and not n.endswith(".avro") for n in seen_while_writing)
    assert len(archived(tmp_path / "archive")) == 50
    assert not any(n.startswith(".") for n in files_under(tmp_path / "archive"))


def test_a_failed_write_is_retryable_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = archive_target(tmp_path)
    deliveries = synthetic(40, BASE_MS, 1000, shard_count=2)
    target.open()

    def full_disk(source: str, destination: str) -> None:
        raise OSError(28, "No space left on device")

    # WHEN the rename fails THEN the whole batch is retryable and no file is left, partial or not
    with monkeypatch.context() as patch:
        patch.setattr(consumers.storage.os, "replace", full_disk)
        with pytest.raises(RetryableError):
            target.deliver(deliveries)
    assert not (tmp_path / "archive").exists() or files_under(tmp_path / "archive") == []
    # WHEN the runner sends the batch again THEN it is archived once
    assert target.deliver(deliveries) == {}
    target.close()
    assert sorted(e["recordId"] for e in archived(tmp_path / "archive")) == sorted(
        d.fields["recordId"] for d in deliveries
    )


def test_recovery_finishes_files_of_a_crashed_process(tmp_path: Path) -> None:
    # GIVEN a process that acknowledged two batches and died before rolling
    first = archive_target(tmp_path, rollSeconds=3600)
    deliveries = synthetic(60, BASE_MS, 1000, shard_count=1)
    first.open()
    first.deliver(deliveries[:30])
    first.deliver(deliveries[30:])
    assert final_files(tmp_path / "archive") == []
    # WHEN another process opens the archive at once THEN it leaves the fresh segments alone
    # (they may be another live process's)
    busy = archive_target(tmp_path)
    busy.open()
    busy.close()
    assert final_files(tmp_path / "archive") == []
    # WHEN the segments have been quiet long enough
    second = archive_target(tmp_path, recover_after=0)
    second.open()
    second.close()
    # THEN the file is there with every acknowledged record, and staging is empty
    assert [e["recordId"] for e in archived(tmp_path / "archive")] == [
        d.fields["recordId"] for d in deliveries
    ]
    assert files_under(tmp_path / "archive") == final_files(tmp_path / "archive")


@pytest.mark.parametrize("fail_at", ["final", "delete"])
def test_recovery_after_a_crash_in_the_middle_of_a_roll(tmp_path: Path, fail_at: str) -> None:
    # GIVEN a roll that failed writing the final file, or after it, deleting the segments
    clock = Clock()
    first = archive_target(tmp_path, clock, rollSeconds=60)
    shards = Shards()
    deliveries = synthetic(60, BASE_MS, 1000, shard_count=1, shards=shards)
    first.open()
    first.deliver(deliveries[:30])
    first.deliver(deliveries[30:])
    storage = first._storage
    assert storage is not None
    real_put, real_delete = storage.put, storage.delete

    def put(key: str, data: bytes) -> None:
        if fail_at == "final" and not key.startswith(STAGING):
            raise Unavailable("crash")
        real_put(key, data)

    def delete(keys: Any) -> None:
        if fail_at == "delete":
            raise Unavailable("crash")
        real_delete(keys)

    storage.put = put  # type: ignore[method-assign]
    storage.delete = delete  # type: ignore[method-assign]
    clock.now += 61
    with pytest.raises(RetryableError):
        first.deliver(synthetic(1, BASE_MS + 5000, 1, shard_count=1, shards=shards))
    assert bool(final_files(tmp_path / "archive")) == (fail_at == "delete")
    # WHEN the next process finishes what was left
    second = archive_target(tmp_path, recover_after=0)
    second.open()
    second.close()
    # THEN each acknowledged record is archived exactly once and staging is empty
    assert sorted(e["recordId"] for e in archived(tmp_path / "archive")) == sorted(
        d.fields["recordId"] for d in deliveries
    )
    assert files_under(tmp_path / "archive") == final_files(tmp_path / "archive")


@pytest.mark.parametrize("crashed, again", [(30, 60), (60, 30)])
def test_a_file_is_never_replaced_by_less(tmp_path: Path, crashed: int, again: int) -> None:
    # GIVEN a process that archived records and died before rolling, and a second one that
    # was handed the same records again (no checkpoint had passed them), starting the same file
    deliveries = synthetic(60, BASE_MS, 1000, shard_count=1)
    first = archive_target(tmp_path, rollSeconds=3600)
    first.open()
    first.deliver(deliveries[:crashed])
    second = archive_target(tmp_path)
    second.open()
    second.deliver(deliveries[:again])
    second.close()
    assert len(final_files(tmp_path / "archive")) == 1
    # WHEN the leftovers are finished later
    third = archive_target(tmp_path, recover_after=0)
    third.open()
    third.close()
    # THEN the one file holds every record either process acknowledged, each once
    assert [e["recordId"] for e in archived(tmp_path / "archive")] == [
        d.fields["recordId"] for d in deliveries[: max(crashed, again)]
    ]
    assert files_under(tmp_path / "archive") == final_files(tmp_path / "archive")


# -- S3 ---------------------------------------------------------------------------------------


@pytest.fixture
def bucket(moto_server: str) -> Iterator[str]:
    s3 = client("s3", endpoint_url=moto_server)
    name = f"archive-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name


def s3_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = client("s3", endpoint_url=endpoint)
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_s3_archive(tmp_path: Path, moto_server: str, bucket: str) -> None:
    # GIVEN an archive in a bucket, records over two hours and two shards, some replayed
    target = archive_target(
        tmp_path, endpoint_url=moto_server, uri=f"s3://{bucket}/events/archive", rollBytes=20_000
    )
    deliveries = synthetic(400, BASE_MS + HOUR_MS // 2, HOUR_MS, shard_count=2)
    shards = Shards()
    replayed = [delivery(shards, interaction(9, BASE_MS, "sx"), 2, replay=True)]
    target.open()
    for batch in runner_batches(deliveries, 100):
        assert target.deliver(batch + replayed) == {}
    staged = s3_objects(moto_server, bucket)
    assert staged and all(k.startswith(f"events/archive/{STAGING}/") for k in staged)
    target.close()
    # THEN only final files remain, laid out by namespace/date/hour, named by first record
    objects = s3_objects(moto_server, bucket)
    assert objects and not any(STAGING in key for key in objects)
    hours = set()
    content = []
    for key, data in sorted(objects.items()):
        prefix, _, name = key.rpartition("/")
        assert prefix.startswith("events/archive/namespace=shop/dt=2026-01-01/hour=0")
        hours.add(prefix[-2:])
        part = entries(data)
        assert name == f"{part[0]['shardId']}-{part[0]['sequenceNumber']}-0.avro"
        content.extend(part)
    assert hours == {"00", "01"}
    assert sorted(e["recordId"] for e in content) == sorted(
        d.fields["recordId"] for d in deliveries
    )
    assert {e["recordId"]: e["data"] for e in content} == {
        d.fields["recordId"]: d.record.data for d in deliveries
    }


def test_s3_recovery(tmp_path: Path, moto_server: str, bucket: str) -> None:
    options: dict[str, Any] = {"uri": f"s3://{bucket}/a", "rollSeconds": 3600}
    first = archive_target(tmp_path, endpoint_url=moto_server, **options)
    deliveries = synthetic(30, BASE_MS, 1000, shard_count=1)
    first.open()
    first.deliver(deliveries)  # then the process dies
    second = archive_target(tmp_path, endpoint_url=moto_server, recover_after=0, **options)
    second.open()
    objects = s3_objects(moto_server, bucket)
    assert len(objects) == 1 and STAGING not in next(iter(objects))
    assert [e["recordId"] for e in entries(next(iter(objects.values())))] == [
        d.fields["recordId"] for d in deliveries
    ]


def test_s3_failures_are_retryable(tmp_path: Path, moto_server: str) -> None:
    target = archive_target(tmp_path, endpoint_url=moto_server, uri="s3://no-such-bucket-here/a")
    target.open()
    with pytest.raises(Unavailable) as raised:
        target.deliver(synthetic(3, BASE_MS, 10, shard_count=1))
    assert raised.value.code == "NoSuchBucket"
