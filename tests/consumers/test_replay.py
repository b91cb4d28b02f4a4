"""Replay: from a real archive (on disk and on S3) and from sample-project Firehose files, into
the real interactions target — watched by a thin wrapper that counts what it was handed."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aws.clients import client
from consumers.base import Delivery, Failures, Target
from consumers.deadletters import FileDeadLetterStore
from consumers.replay import ReplaySummary, find_target, replay
from consumers.targets import TargetContext, build_target
from consumers.targets.archive import ArchiveTarget
from consumers.targets.interactions import store_path
from p13n.cli.replay import add_replay_command, describe
from schemas.config import Config, TargetConfig
from schemas.errors import ConfigError
from tests.consumers.archive_records import (
    BASE_MS,
    CODEC,
    HOUR_MS,
    make_config,
    runner_batches,
    synthetic,
)

ARCHIVED = 100_000
SPAN_MS = 3 * HOUR_MS


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class Watch:
    """What the wrapped target was handed, in order; optionally a stop after N batches."""

    stop: threading.Event = field(default_factory=threading.Event)
    stop_after: int | None = None
    batches: int = 0
    seen: Counter[bytes] = field(default_factory=Counter)
    order: list[tuple[str, int, int]] = field(default_factory=list)  # (key, receivedAt, seq)
    built: list[str] = field(default_factory=list)


class Watched:
    def __init__(self, inner: Target, watch: Watch) -> None:
        self.inner = inner
        self.watch = watch
        self.name = inner.name
        self.kinds = inner.kinds  # type: ignore[attr-defined]

    def open(self) -> None:
        self.inner.open()

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        assert all(d.replay for d in batch)
        failures = self.inner.deliver(batch)
        for index, item in enumerate(batch):
            if index not in failures:
                self.watch.seen[item.fields["recordId"]] += 1
                self.watch.order.append(
                    (
                        item.record.partition_key,
                        item.fields["receivedAt"],
                        int(item.record.sequence_number),
                    )
                )
        self.watch.batches += 1
        if self.watch.batches == self.watch.stop_after:
            self.watch.stop.set()
        return failures

    def close(self) -> None:
        self.inner.close()


def watched(watch: Watch) -> Callable[[TargetConfig, TargetContext], Target]:
    def build(config: TargetConfig, context: TargetContext) -> Target:
        watch.built.append(config.group)
        return Watched(build_target(config, context), watch)

    return build


def rows(config: Config) -> int:
    with sqlite3.connect(store_path(config.data_dir)) as conn:
        return int(conn.execute("SELECT count(*) FROM interactions").fetchone()[0])


def interactions_config(tmp_path: Path, name: str = "data") -> Config:
    return make_config(str(tmp_path / name), [{"type": "interactions", "name": "interactions"}])


@dataclass(frozen=True)
class Archive:
    uri: str
    records: list[tuple[bytes, int, int, bool]]  # (record id, receivedAt, events, has Purchase)
    seconds: float

    def within(self, start_ms: int, end_ms: int) -> list[tuple[bytes, int, int, bool]]:
        return [r for r in self.records if start_ms <= r[1] < end_ms]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """100,000 interactions over three hours, archived through the archive target itself."""
    root = tmp_path_factory.mktemp("archive")
    deliveries = synthetic(ARCHIVED, BASE_MS, SPAN_MS, sessions=2000, shard_count=4)
    config = make_config(str(root / "data"), [{"type": "interactions"}])
    target_config = TargetConfig(
        "archive", "archive", "shop", {"uri": f"file://{root}/archive", "rollBytes": 512 * 1024}
    )
    target = ArchiveTarget(target_config, TargetContext(config, CODEC))
    began = time.perf_counter()
    target.open()
    for batch in runner_batches(deliveries, 500):
        assert target.deliver(batch) == {}
    target.close()
    seconds = time.perf_counter() - began
    records = [
        (
            d.fields["recordId"],
            d.fields["receivedAt"],
            len(d.fields["eventList"]),
            any(e["eventType"] == "Purchase" for e in d.fields["eventList"]),
        )
        for d in deliveries
    ]
    return Archive(f"file://{root}/archive", records, seconds)


def assert_in_order(watch: Watch) -> None:
    """Time order overall; one session's records in stream order."""
    times = [received for _, received, _ in watch.order]
    assert times == sorted(times)
    by_key: dict[str, list[int]] = {}
    for key, _, sequence in watch.order:
        by_key.setdefault(key, []).append(sequence)
    assert all(seqs == sorted(seqs) for seqs in by_key.values())


def test_one_hour_window_into_a_fresh_target(tmp_path: Path, archive: Archive) -> None:
    # GIVEN three hours archived, and a fresh interactions store
    config = interactions_config(tmp_path)
    start, end = BASE_MS + HOUR_MS, BASE_MS + 2 * HOUR_MS
    expected = archive.within(start, end)
    watch = Watch()
    # WHEN the middle hour is replayed into it
    summary = replay(
        archive.uri, "interactions", config, start=at(start), end=at(end), build=watched(watch)
    )
    # THEN exactly that hour arrives, each record once, in order, and only its partitions
    # were read
    assert (summary.read, summary.matched, summary.delivered) == (len(expected),) * 3
    assert summary.dead_lettered == 0 and not summary.interrupted
    assert watch.seen == Counter(r[0] for r in expected)
    assert rows(config) == sum(r[2] for r in expected)
    assert_in_order(watch)
    assert watch.built == ["shop/interactions"]
    print(f"\narchive write: {ARCHIVED / archive.seconds:,.0f} records/s")


def test_an_interrupted_replay_resumes_without_duplicates(tmp_path: Path, archive: Archive) -> None:
    config = interactions_config(tmp_path)
    start, end = BASE_MS + HOUR_MS // 2, BASE_MS + 3 * HOUR_MS // 2  # across two partitions
    expected = archive.within(start, end)
    watch = Watch(stop_after=33)  # about half way
    window = {"start": at(start), "end": at(end), "build": watched(watch), "stop": watch.stop}
    # WHEN the replay is stopped after 33 chunks
    first = replay(archive.uri, "shop/interactions", config, **window)  # type: ignore[arg-type]
    assert first.interrupted
    assert first.delivered == 33 * 500 < len(expected)
    state_files = os.listdir(os.path.join(config.data_dir, "replay"))
    assert len(state_files) == 1
    # AND run again with resume
    watch.stop.clear()
    second = replay(
        archive.uri,
        "shop/interactions",
        config,
        resume=True,
        **window,  # type: ignore[arg-type]
    )
    # THEN every record of the window was delivered exactly once, in order across both runs
    assert not second.interrupted
    assert first.delivered + second.delivered == len(expected)
    assert second.skipped >= first.delivered
    assert set(watch.seen.values()) == {1}
    assert watch.seen == Counter(r[0] for r in expected)
    assert rows(config) == sum(r[2] for r in expected)
    assert_in_order(watch)
    # AND a third resumed run finds nothing left to send
    third = replay(archive.uri, "shop/interactions", config, resume=True, **window)  # type: ignore[arg-type]
    assert third.delivered == 0 and third.matched == 0


def test_event_type_keeps_whole_records(tmp_path: Path, archive: Archive) -> None:
    config = interactions_config(tmp_path)
    start, end = BASE_MS, BASE_MS + 10 * 60_000
    purchases = [r for r in archive.within(start, end) if r[3]]
    summary = replay(
        archive.uri, "interactions", config, start=at(start), end=at(end), event_type="Purchase"
    )
    assert summary.matched == summary.delivered == len(purchases)
    # Whole records: their View and Click events came along.
    assert rows(config) == sum(r[2] for r in purchases) > len(purchases)


def test_dry_run_counts_and_delivers_nothing(tmp_path: Path, archive: Archive) -> None:
    config = interactions_config(tmp_path)
    watch = Watch()
    summary = replay(archive.uri, "interactions", config, dry_run=True, build=watched(watch))
    assert (summary.read, summary.matched, summary.delivered) == (ARCHIVED, ARCHIVED, 0)
    assert summary.dry_run and "dry run" in describe(summary)
    assert watch.batches == 0
    assert not os.path.exists(config.data_dir)  # no store, no state, no dead letters
    # The figure for the bench: reading and filtering, nothing delivered.
    start, end = BASE_MS + HOUR_MS, BASE_MS + 2 * HOUR_MS
    window = replay(archive.uri, "interactions", config, dry_run=True, start=at(start), end=at(end))
    assert window.read == window.matched == len(archive.within(start, end))
    print(
        f"\nreplay read+filter: {summary.read / summary.seconds:,.0f} records/s "
        f"({summary.read} records in {summary.seconds:.2f}s)"
    )


def test_rate_limits_throughput(tmp_path: Path, archive: Archive) -> None:
    start = BASE_MS + HOUR_MS
    end = start + 1500 * SPAN_MS // ARCHIVED  # 1,500 records
    window = {"start": at(start), "end": at(end)}
    free = replay(archive.uri, "interactions", interactions_config(tmp_path, "a"), **window)  # type: ignore[arg-type]
    paced = replay(
        archive.uri,
        "interactions",
        interactions_config(tmp_path, "b"),
        rate=500,
        **window,  # type: ignore[arg-type]
    )
    assert free.delivered == paced.delivered == 1500
    # 500 records/s with a burst of 50: at least 2.9 s for 1,500 records.
    assert paced.seconds >= (1500 - 50) / 500 * 0.95
    assert free.seconds < paced.seconds / 2
    print(
        f"\nunpaced {1500 / free.seconds:,.0f} records/s; --rate 500: {1500 / paced.seconds:,.0f}"
    )


def test_only_the_named_target_is_replayed_into(tmp_path: Path) -> None:
    targets = [{"type": "interactions", "name": "interactions"}, {"type": "archive"}]
    config = make_config(str(tmp_path / "data"), targets)
    archive_uri = f"file://{tmp_path}/archive"
    deliveries = synthetic(200, BASE_MS, 1000, namespace="shop")
    other = synthetic(50, BASE_MS, 1000, namespace="other")
    target = ArchiveTarget(
        TargetConfig("archive", "a", "shop", {"uri": archive_uri}), TargetContext(config, CODEC)
    )
    target.open()
    for batch in runner_batches(deliveries + other, 100):
        target.deliver(batch)
    target.close()
    watch = Watch()
    summary = replay(archive_uri, "interactions", config, build=watched(watch))
    assert watch.built == ["shop/interactions"]  # not the archive target of the same namespace
    assert (summary.read, summary.matched, summary.delivered) == (200, 200, 200)  # pruned
    assert not os.path.exists(os.path.join(config.data_dir, "checkpoints.db"))
    with pytest.raises(ConfigError, match="no event target named 'interactions' in namespace"):
        replay(archive_uri, "interactions", config, namespace="other")


def test_target_names_across_namespaces() -> None:
    config_doc = {
        "namespaces": {
            "a": {"eventTargets": [{"type": "interactions", "name": "store"}]},
            "b": {"eventTargets": [{"type": "interactions", "name": "store"}]},
        }
    }
    from schemas.config import load_config

    config = load_config(config_doc)
    with pytest.raises(ConfigError, match="name it NAMESPACE/store"):
        find_target(config, "store")
    assert find_target(config, "b/store").namespace == "b"
    assert find_target(config, "store", "a").namespace == "a"


# -- the sample project's Firehose output ------------------------------------------------------


def sample_event(n: int, sent_at: float, namespace: str = "shop") -> dict[str, Any]:
    events = [
        {
            "eventType": "View",
            "itemId": f"item-{n}",
            "sentAt": sent_at,
            "properties": json.dumps({"deviceType": "Phone"}),
        }
    ]
    if n % 3 == 0:
        events.append(
            {
                "eventType": "Purchase",
                "itemId": f"item-{n}",
                "sentAt": sent_at,
                "eventValue": 9.5,
                "properties": {"discount": "yes"},
            }
        )
    return {
        "namespace": namespace,
        "path": f"/events/{namespace}",
        "headers": {"User-Agent": "sample-client/1.0", "Authorization": "Bearer secret"},
        "queryStringParameters": None,
        "body": {"sessionId": f"sess-{n % 7}", "userId": f"user-{n % 7}", "eventList": events},
    }


def write_firehose(folder: Path, name: str, objects: list[Any], *, lines: bool, gz: bool) -> None:
    text = ("\n" if lines else "").join(json.dumps(o) for o in objects) + ("\n" if lines else "")
    data = text.encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def firehose(tmp_path: Path) -> tuple[Path, int, int]:
    """Four Firehose objects, one of each kind (concatenated or lines, gzip or plain), with one
    malformed line and one record of another namespace. Returns (root, records, events)."""
    root = tmp_path / "firehose"
    stamp = 1_767_225_600  # 2026-01-01T00:00:00Z
    records = events = 0
    kinds = [(False, False), (True, False), (False, True), (True, True)]
    for index, (lines, gz) in enumerate(kinds):
        objects: list[Any] = []
        for n in range(25):
            sent = stamp + index * 900 + n * 10 + 0.25
            objects.append(sample_event(index * 100 + n, sent))
            records += 1
            events += len(objects[-1]["body"]["eventList"])
        objects.append(sample_event(999, stamp + index * 900, namespace="other"))
        minute = f"{index * 15:02d}"
        name = f"p13n-events-1-2026-01-01-00-{minute}-00-{uuid.uuid4()}"
        write_firehose(
            root / "2026/01/01/00", name + (".gz" if gz else ""), objects, lines=lines, gz=gz
        )
    # A line-delimited file with a line that is not JSON between two good ones.
    good = [sample_event(500, stamp + 3000), sample_event(501, stamp + 3001)]
    text = json.dumps(good[0]) + "\n{not json at all\n" + json.dumps(good[1]) + "\n"
    (root / "2026/01/01/00" / "p13n-events-1-2026-01-01-00-50-00-x").write_text(text)
    records += 2
    events += sum(len(g["body"]["eventList"]) for g in good)
    return root, records, events


def test_firehose_files_are_detected_converted_and_replayed(
    tmp_path: Path, firehose: tuple[Path, int, int]
) -> None:
    root, records, events = firehose
    config = interactions_config(tmp_path)
    watch = Watch()
    summary = replay(str(root), "interactions", config, build=watched(watch))
    # THEN every good record arrived once, in time order; the bad line was dead-lettered
    assert summary.read == records + 4 + 1
    assert summary.matched == records + 1
    assert (summary.delivered, summary.dead_lettered) == (records, 1)
    assert sum(watch.seen.values()) == len(watch.seen) == records
    assert rows(config) == events
    times = [received for _, received, _ in watch.order]
    assert times == sorted(times)
    letters = list(FileDeadLetterStore(os.path.join(config.data_dir, "dead-letters")).list())
    assert [(letter.group, letter.code, letter.data) for letter in letters] == [
        ("replay:shop/interactions", "UnreadableSource", b"{not json at all\n")
    ]
    # AND the records look as ingest would have made them
    with sqlite3.connect(store_path(config.data_dir)) as conn:
        first = conn.execute(
            "SELECT user_id, session_id, item_id, event_type, event_value, ts_ms FROM interactions"
            " WHERE event_type = 'Purchase' ORDER BY ts_ms LIMIT 1"
        ).fetchone()
    assert first == ("user-0", "sess-0", "item-0", "Purchase", 9.5, 1_767_225_600_250)


def test_firehose_conversion_is_deterministic(
    tmp_path: Path, firehose: tuple[Path, int, int]
) -> None:
    root, records, _ = firehose
    from consumers.replay_sources import open_source

    def convert() -> list[tuple[bytes, dict[str, Any]]]:
        source = open_source(f"file://{root}", CODEC)
        return [
            (item.record.data, dict(item.fields or {}))
            for item in source.items()
            if item.problem is None and item.namespace == "shop"
        ]

    once, again = convert(), convert()
    assert once == again and len(once) == records
    data, fields = once[0]
    assert CODEC.decode(data)[1] == fields
    assert fields["context"] == {"ua": "sample-client/1.0"}  # never the Authorization header
    assert fields["eventList"][0]["properties"] == '{"deviceType": "Phone"}'
    purchase = next(f for _, f in once if len(f["eventList"]) == 2)["eventList"][1]
    assert purchase["properties"] == '{"discount":"yes"}'
    assert purchase["sentAt"] == fields["receivedAt"]


def test_firehose_resume(tmp_path: Path, firehose: tuple[Path, int, int]) -> None:
    root, records, _ = firehose
    config = make_config(
        str(tmp_path / "data"), [{"type": "interactions", "name": "interactions", "batchSize": 10}]
    )
    watch = Watch(stop_after=5)
    first = replay(str(root), "interactions", config, build=watched(watch), stop=watch.stop)
    assert first.interrupted and first.delivered == 50
    watch.stop.clear()
    second = replay(str(root), "interactions", config, build=watched(watch), resume=True)
    assert first.delivered + second.delivered == records
    assert set(watch.seen.values()) == {1} and len(watch.seen) == records


# -- S3, and the command line -------------------------------------------------------------------


def test_replay_from_an_s3_archive(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"replay-{uuid.uuid4().hex[:12]}"
    client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    config = interactions_config(tmp_path)
    deliveries = synthetic(3000, BASE_MS, 2 * HOUR_MS, shard_count=2)
    target = ArchiveTarget(
        TargetConfig(
            "archive",
            "a",
            "shop",
            {"uri": f"s3://{bucket}/arch", "rollBytes": 64 * 1024},
            endpoint_url=moto_server,
        ),
        TargetContext(config, CODEC),
    )
    target.open()
    for batch in runner_batches(deliveries, 250):
        target.deliver(batch)
    target.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    watch = Watch()
    start, end = BASE_MS + HOUR_MS, BASE_MS + 2 * HOUR_MS
    summary = replay(
        f"s3://{bucket}/arch",
        "interactions",
        config,
        start=at(start),
        end=at(end),
        build=watched(watch),
    )
    expected = [d for d in deliveries if start <= d.fields["receivedAt"] < end]
    assert summary.read == summary.delivered == len(expected) == 1500
    assert watch.seen == Counter(d.fields["recordId"] for d in expected)
    assert_in_order(watch)


def test_the_command_line(
    tmp_path: Path, archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    config = interactions_config(tmp_path)

    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--config")
        parser.add_argument("--data-dir")
        return parser

    root = argparse.ArgumentParser(prog="p13n")
    commands = root.add_subparsers(dest="command", required=True)
    add_replay_command(commands, with_config, lambda args: config)
    args = root.parse_args(
        [
            "replay",
            "--source",
            archive.uri,
            "--target",
            "interactions",
            "--from",
            "2026-01-01T01:00:00Z",
            "--to",
            "2026-01-01T01:30",
            "--dry-run",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    hour = len(archive.within(BASE_MS + HOUR_MS, BASE_MS + 2 * HOUR_MS))
    expected = len(archive.within(BASE_MS + HOUR_MS, BASE_MS + 3 * HOUR_MS // 2))
    # Only the one hour's partition is read; half of it matches.
    assert f"read {hour}, matched {expected}, delivered 0" in out
    with pytest.raises(SystemExit):
        root.parse_args(["replay", "--source", "x", "--target", "t", "--from", "yesterday"])


def test_summary_text() -> None:
    summary = ReplaySummary("file:///a", "replay:shop/t", 10, 5, 4, 1, 2, interrupted=True)
    text = describe(summary)
    assert "read 10, matched 5, delivered 4, dead-lettered 1" in text
    assert "skipped 2" in text and "--resume" in text
