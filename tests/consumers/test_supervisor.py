"""The supervisor's parts: the group lock (against a real second process), placeholder
detection, and the runner leaving a batch unsettled on an operator error."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers import supervisor
from consumers.deadletters import FileDeadLetterStore
from consumers.runner import RetryPolicy
from consumers.supervisor import (
    ConsumerSet,
    find_placeholders,
    missing_credentials,
    placeholders,
)
from consumers.targets import TargetContext, build_target
from schemas.codec import Codec
from schemas.config import Config, TargetConfig, default_document, load_config
from schemas.errors import OperatorError
from schemas.interactions import store_path
from streams.base import Entry
from streams.checkpoints import GroupLock, SqliteCheckpointStore
from streams.embedded import EmbeddedReader, EmbeddedWriter
from tests.consumers.test_runner import FakeTarget, consumer, embedded, interaction
from tests.fixtures.service import wait_until

__all__ = ["embedded"]  # the fixture, used by name


def test_a_group_lock_is_exclusive_names_its_holder_and_frees_on_release(tmp_path: Path) -> None:
    first = GroupLock(str(tmp_path / "locks"), "shop/archive")
    second = GroupLock(str(tmp_path / "locks"), "shop/archive")
    other = GroupLock(str(tmp_path / "locks"), "shop/other")
    assert first.acquire("pid 1 on a: p13n serve")
    assert first.acquire("again")  # already held by this object: still true, text unchanged
    assert not second.acquire("pid 2 on b: p13n consume")
    assert second.holder() == "pid 1 on a: p13n serve"
    assert other.acquire("pid 1 on a: p13n serve")  # groups lock apart
    first.release()
    assert second.acquire("pid 2 on b: p13n consume")
    assert first.holder() == "pid 2 on b: p13n consume"
    second.release()
    other.release()
    assert Path(first.path).name == "shop%2Farchive.lock"


def test_a_group_lock_dies_with_its_process(tmp_path: Path) -> None:
    directory = str(tmp_path / "locks")
    script = (
        "import sys\n"
        "from streams.checkpoints import GroupLock\n"
        f"assert GroupLock({directory!r}, 'g').acquire('child')\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            mine = GroupLock(directory, "g")
            assert not mine.acquire("parent")
            assert mine.holder() == "child"
            holder.kill()  # no clean release: the kernel drops the lock
            holder.wait(10)
            wait_until(lambda: mine.acquire("parent"), timeout=10)
            mine.release()
        finally:
            if holder.poll() is None:
                holder.kill()


def test_placeholders_are_found_in_nested_settings_but_not_in_ipv6_hosts() -> None:
    target = TargetConfig(
        type="http",
        name="hook",
        namespace="shop",
        options={"url": "http://[::1]:8080/x", "headers": {"x-key": "[API_KEY]"}},
        region="[REGION]",
    )
    assert placeholders(target) == ["headers.x-key: [API_KEY]", "region: [REGION]"]
    assert find_placeholders({"a": ["ok", "arn:aws:x:[REGION]:1"]}) == [
        "a[1]: arn:aws:x:[REGION]:1"
    ]


def test_an_operator_error_leaves_the_batch_unsettled_and_uncounted(embedded) -> None:
    writer, path, tmp = embedded
    writer.put_batch([Entry("s", interaction("s", n)) for n in range(5)])
    denied = FakeTarget(lambda delivery, attempt: OperatorError("no credentials"))
    group = consumer(denied, path, tmp)
    with pytest.raises(OperatorError):
        group.poll_once()
    group.reader.close()
    assert list(FileDeadLetterStore(str(tmp / "dead")).list()) == []
    checkpoints = SqliteCheckpointStore(str(tmp / "checkpoints.db"))
    reader = EmbeddedReader(path)
    assert all(checkpoints.load("shop/fake", s.shard_id) is None for s in reader.list_shards())
    reader.close()
    checkpoints.close()
    # Once fixed, a rebuilt consumer delivers the same records, in order, from the start.
    fixed = FakeTarget()
    again = consumer(fixed, path, tmp)
    while again.poll_once():
        pass
    assert fixed.delivered == [f"s-{n}" for n in range(5)]
    assert denied.attempts["s-0"] == 1  # no retry loop spent on it


@pytest.mark.parametrize(
    ("target_type", "options", "dead_letters", "pauses"),
    [
        ("archive", {}, None, False),  # file://<dataDir>/archive
        ("archive", {"uri": "s3://bucket/archive"}, None, True),
        ("http", {"url": "http://127.0.0.1:9/x"}, None, False),
        ("http", {"url": "http://127.0.0.1:9/x"}, "s3://bucket/dead", True),
        ("kinesis-stream", {"streamName": "s"}, None, True),
    ],
)
def test_only_targets_and_stores_that_call_aws_pause_without_credentials(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target_type: str,
    options: dict,
    dead_letters: str | None,
    pauses: bool,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = load_config(default_document())
    target = TargetConfig(
        type=target_type,
        name="t",
        namespace="demo",
        options=options,
        region="us-east-1",
        dead_letter_uri=dead_letters,
    )
    built = build_target(target, TargetContext(config, Codec.packaged()))
    problem = missing_credentials(built, target, config)
    assert (problem is not None) == pauses
    if problem is not None:
        assert (
            problem.code == "NoCredentialsError" and "demo/t: no AWS credentials" in problem.message
        )


def test_a_targets_own_bounds_win_over_the_consumer_block_and_ours_fill_in() -> None:
    doc = default_document()
    doc["consumer"] = {"maxAttempts": 3, "batchSize": 50, "pollIntervalMs": 20}
    defaults = load_config(doc).consumer
    assert (defaults.batch_size, defaults.poll_interval_ms) == (50, 20)
    own = TargetConfig(type="http", name="t", namespace="demo", options={}, max_attempts=5)
    other = TargetConfig(type="http", name="u", namespace="demo", options={})
    assert RetryPolicy.for_target(own, defaults).max_attempts == 5
    assert RetryPolicy.for_target(other, defaults).max_attempts == 3
    assert RetryPolicy.for_target(other, defaults).max_record_age_seconds == 6 * 3600
    assert load_config(default_document()).consumer.batch_size == 500


# -- a group that cannot start, or crashes, is restarted and loses nothing -------------------


def _interactions_config(tmp_path: Path) -> Config:
    return load_config(
        {
            "namespaces": {
                "shop": {"eventTargets": [{"type": "interactions", "name": "interactions"}]}
            },
            "stream": {"type": "embedded", "shards": 2},
            "consumer": {"pollIntervalMs": 20},
            "dataDir": str(tmp_path),
        }
    )


def _stored(config: Config) -> list[str]:
    path = store_path(config.data_dir)
    if not os.path.isfile(path):
        return []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            return [
                row[0] for row in conn.execute("SELECT event_id FROM interactions ORDER BY ts_ms")
            ]
        except sqlite3.OperationalError:  # the table is not there yet
            return []


def _restarting(consumers: ConsumerSet) -> dict[str, Any]:
    """The interactions group's health once it shows ``restarting``."""
    return wait_until(
        lambda: (h := consumers.health()["shop/interactions"])["state"] == "restarting" and h,
        what="the group restarting",
    )


@pytest.fixture
def log_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[EmbeddedWriter, Config]]:
    """An embedded log and a config whose one target is ``interactions`` on it; restarts are
    quick."""
    monkeypatch.setattr(supervisor, "PAUSE_FIRST_SECONDS", 0.05)
    config = _interactions_config(tmp_path)
    writer = EmbeddedWriter(config.stream_path(), shards=2)
    yield writer, config
    writer.close()


def test_a_group_whose_store_cannot_be_opened_restarts_until_it_can(
    log_and_config: tuple[EmbeddedWriter, Config],
) -> None:
    writer, config = log_and_config
    writer.put_batch([Entry("s", interaction("s", n)) for n in range(10)])
    # A directory where the store's file belongs: SQLite cannot open it.
    blocked = Path(store_path(config.data_dir))
    blocked.mkdir()
    consumers = ConsumerSet(config)
    consumers.start()
    try:
        health = _restarting(consumers)
        assert health["reason"].startswith(f"cannot open {blocked}")
        writer.put_batch([Entry("s", interaction("s", n)) for n in range(10, 20)])
        blocked.rmdir()
        wait_until(lambda: len(_stored(config)) == 20, what="all 20 events stored")
        assert _stored(config) == [f"s-{n}" for n in range(20)]
        assert consumers.health()["shop/interactions"]["state"] == "running"
    finally:
        consumers.stop()


def test_a_group_that_crashes_is_restarted_from_its_checkpoint(
    log_and_config: tuple[EmbeddedWriter, Config],
) -> None:
    writer, config = log_and_config
    fixed = threading.Event()

    def reader(config: Config) -> EmbeddedReader:
        if not fixed.is_set():
            raise RuntimeError("a bug in building the reader")
        return EmbeddedReader(config.stream_path())

    consumers = ConsumerSet(config, reader=reader)
    consumers.start()
    try:
        health = _restarting(consumers)
        assert health["reason"] == "crashed: RuntimeError: a bug in building the reader"
        writer.put_batch([Entry("s", interaction("s", n)) for n in range(5)])
        fixed.set()
        wait_until(lambda: len(_stored(config)) == 5, what="the events stored")
        assert consumers.health()["shop/interactions"]["state"] == "running"
    finally:
        consumers.stop()
