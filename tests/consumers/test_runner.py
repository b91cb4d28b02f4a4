"""The runner's contract: order, outcomes, dead letters, checkpoints — over real streams.

The target here is a plain function-backed fake (the boundary the runner talks to); the stream,
checkpoints and dead letters are the real embedded ones, and one test runs on kinesis-local.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from consumers.base import Deferred, Delivery, Failures
from consumers.deadletters import FileDeadLetterStore
from consumers.runner import GroupConsumer, RetryPolicy
from schemas.codec import EXPOSURE, INTERACTION, Codec
from schemas.errors import InvalidRequest, P13nError, Throttled
from schemas.records import new_record_id
from streams.base import SHARD_END, Entry
from streams.checkpoints import SqliteCheckpointStore
from streams.embedded import EmbeddedReader, EmbeddedWriter
from streams.kinesis import KinesisReader, KinesisWriter
from tests.fixtures.servers import kinesis_client
from tests.fixtures.service import wait_until

CODEC = Codec.packaged()


def interaction(session: str, n: int, namespace: str = "shop") -> bytes:
    return CODEC.encode(
        INTERACTION,
        {
            "recordId": new_record_id(),
            "namespace": namespace,
            "receivedAt": 1_700_000_000_000 + n,
            "partitionKeyField": "sessionId",
            "sessionId": session,
            "userId": f"u-{session}",
            "eventList": [
                {
                    "eventId": f"{session}-{n}",
                    "eventType": "View",
                    "eventValue": None,
                    "itemId": f"i{n}",
                    "impression": [],
                    "properties": None,
                    "recommendationId": None,
                    "sentAt": 1_700_000_000_000 + n,
                    "metricAttribution": None,
                }
            ],
            "experimentConversions": [],
            "context": {},
        },
    )


def exposure(user: str) -> bytes:
    return CODEC.encode(
        EXPOSURE,
        {
            "recordId": new_record_id(),
            "namespace": "shop",
            "receivedAt": 1,
            "partitionKeyField": "userId",
            "userId": user,
            "sessionId": None,
            "action": "recommend-items",
            "recommender": "r",
            "feature": "f",
            "variation": "v",
            "recommendationId": None,
        },
    )


class FakeTarget:
    """Delivers by appending event ids; ``decide(delivery, attempt)`` may return an error."""

    name = "fake"
    kinds = frozenset({INTERACTION})

    def __init__(self, decide: Callable[[Delivery, int], P13nError | None] | None = None) -> None:
        self.decide = decide or (lambda delivery, attempt: None)
        self.delivered: list[str] = []
        self.attempts: dict[str, int] = defaultdict(int)
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        failures: dict[int, P13nError] = {}
        blocked: set[str] = set()
        for index, delivery in enumerate(batch):
            event = delivery.fields["eventList"][0]["eventId"]
            key = delivery.record.partition_key
            if key in blocked:  # the ordering rule: successors of a retried record wait too
                failures[index] = Deferred()
                continue
            self.attempts[event] += 1
            error = self.decide(delivery, self.attempts[event])
            if error is None:
                self.delivered.append(event)
            else:
                failures[index] = error
                if not isinstance(error, InvalidRequest):
                    blocked.add(key)
        return failures

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def embedded(tmp_path):
    path = str(tmp_path / "stream.db")
    writer = EmbeddedWriter(path, shards=2)
    yield writer, path, tmp_path
    writer.close()


def consumer(target: FakeTarget, path: str, tmp_path, **kwargs: Any) -> GroupConsumer:
    return GroupConsumer(
        "shop/fake",
        "shop",
        target,
        EmbeddedReader(path),
        SqliteCheckpointStore(str(tmp_path / "checkpoints.db")),
        FileDeadLetterStore(str(tmp_path / "dead")),
        CODEC,
        kinds=target.kinds,
        batch_size=kwargs.pop("batch_size", 50),
        policy=kwargs.pop("policy", RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01)),
        **kwargs,
    )


def drain(group: GroupConsumer) -> None:
    while group.poll_once():
        pass


def per_session(events: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for event in events:
        session, n = event.rsplit("-", 1)
        out[session].append(int(n))
    return out


def test_everything_is_delivered_in_per_session_order_and_resumes_after_the_checkpoint(embedded):
    writer, path, tmp = embedded
    writer.put_batch([Entry(f"s{n % 7}", interaction(f"s{n % 7}", n)) for n in range(300)])
    target = FakeTarget()
    group = consumer(target, path, tmp)
    drain(group)
    assert len(target.delivered) == 300
    for session, numbers in per_session(target.delivered).items():
        assert numbers == sorted(numbers), session

    writer.put_batch([Entry("s1", interaction("s1", n)) for n in range(300, 310)])
    again = FakeTarget()
    drain(consumer(again, path, tmp))  # a restarted consumer: same checkpoints
    assert again.delivered == [f"s1-{n}" for n in range(300, 310)]


def test_garbage_bytes_become_one_dead_letter_and_the_rest_flows(embedded):
    writer, path, tmp = embedded
    writer.put_batch(
        [
            Entry("s", interaction("s", 0)),
            Entry("s", b"\x00garbage\xff"),
            Entry("s", interaction("s", 2)),
        ]
    )
    target = FakeTarget()
    drain(consumer(target, path, tmp))
    assert target.delivered == ["s-0", "s-2"]
    letters = list(FileDeadLetterStore(str(tmp / "dead")).list())
    assert len(letters) == 1
    assert letters[0].data == b"\x00garbage\xff"
    assert letters[0].code == "NotAvro"
    assert letters[0].group == "shop/fake"


def test_retryable_failures_are_retried_in_order_until_delivered(embedded):
    writer, path, tmp = embedded
    writer.put_batch([Entry(f"s{n % 3}", interaction(f"s{n % 3}", n)) for n in range(60)])
    flaky = {f"s{n % 3}-{n}" for n in range(0, 60, 4)}

    def decide(delivery: Delivery, attempt: int) -> P13nError | None:
        event = delivery.fields["eventList"][0]["eventId"]
        return Throttled("slow down") if event in flaky and attempt < 3 else None

    target = FakeTarget(decide)
    drain(consumer(target, path, tmp))
    assert sorted(target.delivered) == sorted(f"s{n % 3}-{n}" for n in range(60))
    for session, numbers in per_session(target.delivered).items():
        assert numbers == sorted(numbers), session
    assert all(target.attempts[e] == 3 for e in flaky)
    assert list(FileDeadLetterStore(str(tmp / "dead")).list()) == []


def test_permanent_failures_are_dead_lettered_at_once_and_skipped(embedded):
    writer, path, tmp = embedded
    writer.put_batch([Entry("s", interaction("s", n)) for n in range(5)])

    def decide(delivery: Delivery, attempt: int) -> P13nError | None:
        bad = delivery.fields["eventList"][0]["eventId"] == "s-2"
        return InvalidRequest("itemId rejected") if bad else None

    target = FakeTarget(decide)
    drain(consumer(target, path, tmp))
    assert target.delivered == ["s-0", "s-1", "s-3", "s-4"]
    assert target.attempts["s-2"] == 1
    (letter,) = FileDeadLetterStore(str(tmp / "dead")).list()
    assert (letter.code, letter.attempts, letter.message) == (
        "ValidationError",
        1,
        "itemId rejected",
    )
    assert letter.error_type == "permanent:InvalidRequest"
    assert CODEC.decode(letter.data)[1]["eventList"][0]["eventId"] == "s-2"
    assert letter.record_id is not None


def test_retries_end_after_max_attempts_in_a_dead_letter(embedded):
    writer, path, tmp = embedded
    writer.put_batch([Entry("s", interaction("s", 0)), Entry("t", interaction("t", 1))])

    def decide(delivery: Delivery, attempt: int) -> P13nError | None:
        return Throttled("never") if delivery.record.partition_key == "s" else None

    target = FakeTarget(decide)
    drain(consumer(target, path, tmp))
    assert target.delivered == ["t-1"]
    (letter,) = FileDeadLetterStore(str(tmp / "dead")).list()
    assert (letter.attempts, letter.error_type) == (5, "retryable:Throttled")
    assert letter.first_attempt_ms <= letter.last_attempt_ms


def test_other_namespaces_and_kinds_are_skipped_but_checkpointed(embedded):
    writer, path, tmp = embedded
    writer.put_batch(
        [
            Entry("s", interaction("s", 0, namespace="other")),
            Entry("s", exposure("u")),
            Entry("s", interaction("s", 1)),
        ]
    )
    target = FakeTarget()
    group = consumer(target, path, tmp)
    drain(group)
    assert target.delivered == ["s-1"]
    shard = next(
        s
        for s in EmbeddedReader(path).list_shards()
        if group.checkpoints.load(group.group, s.shard_id)
    )
    assert group.checkpoints.load(group.group, shard.shard_id).sequence_number == "3"


def test_a_stop_during_backoff_leaves_the_batch_unsettled(embedded):
    writer, path, tmp = embedded
    writer.put_batch([Entry("s", interaction("s", 0))])
    stop = threading.Event()
    target = FakeTarget(lambda delivery, attempt: Throttled("down"))
    group = consumer(
        target,
        path,
        tmp,
        stop=stop,
        policy=RetryPolicy(max_attempts=100, base_delay=5, max_delay=5),
    )
    runner = threading.Thread(target=group.run)
    runner.start()
    wait_until(lambda: target.attempts["s-0"] >= 1, timeout=10)
    stop.set()
    runner.join(10)
    assert not runner.is_alive()
    assert target.closed
    assert all(
        group.checkpoints.load(group.group, s.shard_id) is None for s in group.reader.list_shards()
    )
    assert list(FileDeadLetterStore(str(tmp / "dead")).list()) == []


def test_parent_shard_is_finished_before_its_children_on_kinesis(
    kinesis_local, make_kinesis_stream, tmp_path
):
    stream = make_kinesis_stream(kinesis_local, shards=1)
    client = kinesis_client(kinesis_local)
    writer = KinesisWriter(client, stream)
    writer.put_batch([Entry(f"s{n % 5}", interaction(f"s{n % 5}", n)) for n in range(50)])
    (parent,) = client.list_shards(StreamName=stream)["Shards"]
    client.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(2**127)
    )
    wait_until(
        lambda: (
            client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            == "ACTIVE"
        ),
        timeout=20,
    )
    writer = KinesisWriter(client, stream)
    writer.put_batch([Entry(f"s{n % 5}", interaction(f"s{n % 5}", n)) for n in range(50, 100)])

    target = FakeTarget()
    group = GroupConsumer(
        "shop/fake",
        "shop",
        target,
        KinesisReader(client, stream),
        SqliteCheckpointStore(str(tmp_path / "cp.db")),
        FileDeadLetterStore(str(tmp_path / "dead")),
        CODEC,
        kinds=target.kinds,
    )
    wait_until(lambda: (group.poll_once() or True) and len(target.delivered) >= 100, timeout=30)
    assert len(target.delivered) == 100
    for session, numbers in per_session(target.delivered).items():
        assert numbers == sorted(numbers), session  # parent (0..49) entirely before children
    assert group.checkpoints.load("shop/fake", parent["ShardId"]) == SHARD_END
