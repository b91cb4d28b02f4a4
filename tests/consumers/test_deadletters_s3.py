"""Dead letters in S3 (moto server): layout, read-back order, redrive marks, the factory."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from aws.clients import client
from consumers.deadletters import DeadLetter, dead_letter_store
from consumers.deadletters_s3 import S3DeadLetterStore
from consumers.redrive import redrive
from consumers.runner import GroupConsumer, RetryPolicy
from schemas.errors import InvalidRequest, NotFound, P13nError
from streams.base import Entry
from streams.checkpoints import SqliteCheckpointStore
from streams.embedded import EmbeddedReader, EmbeddedWriter
from tests.consumers.test_runner import CODEC, FakeTarget, interaction
from tests.fixtures.servers import wait_until

DAY_MS = 86_400_000
JAN_2 = 1_704_153_600_000  # 2024-01-02T00:00:00Z


@pytest.fixture
def s3(moto_server: str) -> Any:
    return client("s3", endpoint_url=moto_server, max_attempts=1)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"dead-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def letter(group: str, n: int, at_ms: int = JAN_2) -> DeadLetter:
    return DeadLetter(
        letter_id=uuid.uuid4().hex,
        group=group,
        record_id=f"r{n}",
        error_type="permanent:InvalidRequest",
        code="ValidationError",
        message=f"bad {n}",
        attempts=1,
        first_attempt_ms=at_ms,
        last_attempt_ms=at_ms,
        shard_id="shardId-000000000000",
        sequence_number=str(1000 + n),
        sub_sequence=n % 3,
        partition_key=f"s{n}",
        data=bytes([0, 255, n]) + b"\xc3\x01",
    )


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in page.get("Contents", [])]


def test_each_put_is_one_object_and_list_reads_them_back_in_order(s3, bucket):
    store = S3DeadLetterStore(s3, bucket, "p13n/dead/")
    first = [letter("shop/fake", n) for n in range(3)]
    second = [letter("shop/fake", n) for n in range(3, 5)]
    other = [letter("news/archive", 9)]
    store.put(first)
    # Object names start with the epoch ms: the next put must land in a later millisecond.
    started = time.time()
    wait_until(lambda: int(time.time() * 1000) > int(started * 1000), 1, "the next millisecond")
    store.put(second)
    store.put(other)

    written = keys(s3, bucket)
    assert len(written) == 3
    pattern = r"p13n/dead/(shop%2Ffake|news%2Farchive)/dt=2024-01-02/\d{13}-[0-9a-f]{32}\.jsonl"
    assert all(re.fullmatch(pattern, key) for key in written), written

    assert list(store.list("shop/fake")) == first + second
    assert list(store.list("news/archive")) == other
    assert sorted(letter.letter_id for letter in store.list()) == sorted(
        letter.letter_id for letter in first + second + other
    )
    assert list(store.list("shop/none")) == []
    assert list(store.list("shop")) == []  # a group's folder is not a prefix of another's


def test_letters_of_different_days_go_to_their_day_folders(s3, bucket):
    store = S3DeadLetterStore(s3, bucket)  # no prefix
    letters = [letter("shop/fake", 0), letter("shop/fake", 1, JAN_2 + DAY_MS)]
    store.put(letters)
    days = sorted(key.split("/")[1] for key in keys(s3, bucket))
    assert days == ["dt=2024-01-02", "dt=2024-01-03"]
    assert list(store.list("shop/fake")) == letters


def test_redriven_marks_are_one_object_per_call_and_never_listed_as_letters(s3, bucket):
    store = S3DeadLetterStore(s3, bucket, "dl")
    letters = [letter("shop/fake", n) for n in range(4)]
    store.put(letters)
    assert store.redriven("shop/fake") == set()
    store.mark_redriven("shop/fake", [letters[0].letter_id, letters[1].letter_id])
    store.mark_redriven("shop/fake", [letters[2].letter_id])
    store.mark_redriven("shop/fake", [])
    assert len(keys(s3, bucket, "dl/shop%2Ffake/redriven/")) == 2
    assert store.redriven("shop/fake") == {letters[n].letter_id for n in range(3)}
    assert store.redriven("news/archive") == set()
    assert list(store.list()) == letters


def test_the_factory_builds_it_from_an_s3_uri(moto_server, s3, bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    store = dead_letter_store(f"s3://{bucket}/some/prefix", str(tmp_path))
    assert isinstance(store, S3DeadLetterStore)
    entry = letter("shop/fake", 1)
    store.put([entry])
    assert keys(s3, bucket)[0].startswith("some/prefix/shop%2Ffake/dt=")
    assert list(S3DeadLetterStore(s3, bucket, "some/prefix").list()) == [entry]


def test_a_missing_bucket_is_a_translated_error(s3):
    store = S3DeadLetterStore(s3, f"missing-{uuid.uuid4().hex[:12]}", "x")
    with pytest.raises(NotFound) as error:
        store.put([letter("shop/fake", 0)])
    assert error.value.code == "NoSuchBucket"
    with pytest.raises(NotFound):
        list(store.list("shop/fake"))


def test_the_runner_dead_letters_to_s3_and_redrive_sends_each_letter_once(s3, bucket, tmp_path):
    path = str(tmp_path / "stream.db")
    writer = EmbeddedWriter(path, shards=1)
    reader = EmbeddedReader(path)
    checkpoints = SqliteCheckpointStore(str(tmp_path / "cp.db"))
    rejecting = True

    def decide(delivery: Any, attempt: int) -> P13nError | None:
        bad = delivery.fields["eventList"][0]["eventId"] in {"s-1", "s-3"}
        return InvalidRequest("rejected") if bad and rejecting else None

    target = FakeTarget(decide)
    store = S3DeadLetterStore(s3, bucket, "dl")
    group = GroupConsumer(
        "shop/fake",
        "shop",
        target,
        reader,
        checkpoints,
        store,
        CODEC,
        kinds=target.kinds,
        policy=RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.01),
    )
    try:
        writer.put_batch([Entry("s", interaction("s", n)) for n in range(5)])
        while group.poll_once():
            pass
        assert target.delivered == ["s-0", "s-2", "s-4"]
        letters = list(store.list("shop/fake"))
        assert [CODEC.decode(x.data)[1]["eventList"][0]["eventId"] for x in letters] == [
            "s-1",
            "s-3",
        ]

        rejecting = False
        summary = redrive(group)
        assert (summary.letters, summary.delivered, summary.dead_lettered) == (2, 2, 0)
        assert target.delivered[-2:] == ["s-1", "s-3"]
        assert redrive(group).letters == 0  # marked redriven in S3
    finally:
        writer.close()
        reader.close()
        checkpoints.close()
