"""Several consumers of one group sharing a Kinesis stream through DynamoDB leases.

The stream is kinesis-local (4 shards), the checkpoints a DynamoDB table on moto server (behind
``SerialProxy``, which gives moto DynamoDB's atomic conditional writes), and each consumer has
its own clients and owner name, as separate ``p13n consume`` processes would. Consumers are
driven round by round with ``poll_once`` where the order of events matters, and run on threads
through ``ConsumerSet`` for the end-to-end case.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import pytest

import consumers.targets
from aws.clients import client
from consumers.base import Delivery, Failures
from consumers.deadletters import FileDeadLetterStore
from consumers.leases import ShardLeases
from consumers.runner import GroupConsumer
from consumers.supervisor import ConsumerSet, build_checkpoints
from schemas.codec import INTERACTION, Codec
from schemas.config import load_config
from schemas.errors import Unavailable
from streams.base import Entry, Shard
from streams.checkpoints import SqliteCheckpointStore
from streams.dynamodb_checkpoints import DynamoCheckpointStore, create_table
from streams.kinesis import KinesisReader, KinesisWriter
from tests.consumers.test_runner import interaction
from tests.fixtures.serial_proxy import SerialProxy
from tests.fixtures.servers import kinesis_client, wait_until

CODEC = Codec.packaged()
LEASE = 2.0
GROUP = "shop/recorder"


class Recorder:
    """A target that notes which shard each event came from; ``slow`` runs inside deliver."""

    name = "recorder"
    kinds = frozenset({INTERACTION})

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (shard id, event id)
        self.first_at: dict[str, float] = {}  # shard id -> wall time of its first delivery
        self.during_delivery: Any = None

    def open(self) -> None:
        pass

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self.during_delivery is not None:
            self.during_delivery()
        for delivery in batch:
            self.first_at.setdefault(delivery.record.shard_id, time.time())
            self.seen.append((delivery.record.shard_id, delivery.fields["eventList"][0]["eventId"]))
        return {}

    def close(self) -> None:
        pass

    def events(self) -> list[str]:
        return [event for _, event in self.seen]

    def shards(self) -> set[str]:
        return {shard for shard, _ in self.seen}


@pytest.fixture
def dynamodb(moto_server: str) -> Iterator[str]:
    proxy = SerialProxy(moto_server)
    yield proxy.url
    proxy.close()


@pytest.fixture
def table(dynamodb: str) -> str:
    name = f"leases-{uuid.uuid4().hex[:8]}"
    create_table(client("dynamodb", endpoint_url=dynamodb), name)
    return name


@pytest.fixture
def stream(kinesis_local: str, make_kinesis_stream: Any) -> str:
    return str(make_kinesis_stream(kinesis_local, shards=4))


def write(kinesis_local: str, stream: str, numbers: range) -> None:
    writer = KinesisWriter(kinesis_client(kinesis_local), stream)
    writer.put_batch([Entry(f"s{n % 16}", interaction(f"s{n % 16}", n)) for n in numbers])
    writer.close()


def store(owner: str, dynamodb: str, table: str, lease: float = LEASE) -> DynamoCheckpointStore:
    return DynamoCheckpointStore(client("dynamodb", endpoint_url=dynamodb), table, owner, lease)


def consumer(
    owner: str, kinesis_local: str, stream: str, dynamodb: str, table: str, tmp_path: Path
) -> tuple[GroupConsumer, Recorder]:
    target = Recorder()
    group = GroupConsumer(
        GROUP,
        "shop",
        target,
        KinesisReader(kinesis_client(kinesis_local), stream),
        store(owner, dynamodb, table),
        FileDeadLetterStore(str(tmp_path / "dead")),
        CODEC,
        kinds=target.kinds,
        batch_size=40,
    )
    return group, target


def owners(group: GroupConsumer, checker: DynamoCheckpointStore) -> Counter[str | None]:
    return Counter(checker.lease(GROUP, s.shard_id)[0] for s in group.reader.list_shards())


def numbers_of(events: list[str]) -> list[int]:
    return [int(event.rsplit("-", 1)[1]) for event in events]


def test_two_consumers_split_the_shards_and_deliver_every_record_once(
    kinesis_local, stream, dynamodb, table, tmp_path
):
    write(kinesis_local, stream, range(200))
    a, seen_a = consumer("a", kinesis_local, stream, dynamodb, table, tmp_path)
    b, seen_b = consumer("b", kinesis_local, stream, dynamodb, table, tmp_path)

    def both() -> bool:
        a.poll_once()
        b.poll_once()
        return len(seen_a.seen) + len(seen_b.seen) >= 200

    wait_until(both, 30, "200 records delivered by a and b")
    delivered = Counter(seen_a.events() + seen_b.events())
    assert len(delivered) == 200
    assert set(delivered.values()) == {1}
    # taking one new shard per round, consumers started together share the stream
    assert owners(a, store("checker", dynamodb, table)) == Counter({"a": 2, "b": 2})
    assert seen_a.shards().isdisjoint(seen_b.shards())
    for target in (seen_a, seen_b):
        by_session: dict[str, list[int]] = {}
        for event in target.events():
            by_session.setdefault(event.rsplit("-", 1)[0], []).append(numbers_of([event])[0])
        assert all(ns == sorted(ns) for ns in by_session.values())


def test_a_stopped_consumer_s_shards_are_taken_over_from_its_checkpoints(
    kinesis_local, stream, dynamodb, table, tmp_path
):
    write(kinesis_local, stream, range(100))
    a, seen_a = consumer("a", kinesis_local, stream, dynamodb, table, tmp_path)
    b, seen_b = consumer("b", kinesis_local, stream, dynamodb, table, tmp_path)

    def both() -> bool:
        a.poll_once()
        b.poll_once()
        return len(seen_a.seen) + len(seen_b.seen) >= 100

    wait_until(both, 30, "the first 100 records")
    shards_of_a = {s for s, n in owners_by_shard(a, dynamodb, table).items() if n == "a"}
    assert len(shards_of_a) == 2

    # a dies: no more polls, no renewals, no release
    checker = store("checker", dynamodb, table)
    expiry = {shard: checker.lease(GROUP, shard)[1] / 1000 for shard in shards_of_a}
    write(kinesis_local, stream, range(100, 200))
    wait_until(
        lambda: (b.poll_once() or True) and len(seen_a.seen) + len(seen_b.seen) >= 200,
        30,
        "b to deliver the rest, a's shards included",
    )
    for shard in shards_of_a:  # b read none of a's shards before a's lease on it expired
        assert seen_b.first_at[shard] >= expiry[shard]

    delivered = Counter(seen_a.events() + seen_b.events())
    assert len(delivered) == 200
    assert set(delivered.values()) == {1}  # b went on from a's checkpoints
    from_a_shards = [event for shard, event in seen_b.seen if shard in shards_of_a]
    assert from_a_shards
    assert min(numbers_of(from_a_shards)) >= 100
    assert set(owners_by_shard(a, dynamodb, table).values()) == {"b"}

    # a wakes up: its renewal finds every lease gone, and it reads nothing more
    write(kinesis_local, stream, range(200, 220))
    before = len(seen_a.seen)
    for _ in range(3):
        a.poll_once()
    assert len(seen_a.seen) == before
    wait_until(lambda: (b.poll_once() or True) and len(seen_b.seen) >= 200 - before + 20, 20, "b")


def owners_by_shard(group: GroupConsumer, dynamodb: str, table: str) -> dict[str, str | None]:
    checker = store("checker", dynamodb, table)
    return {s.shard_id: checker.lease(GROUP, s.shard_id)[0] for s in group.reader.list_shards()}


def test_a_consumer_that_loses_its_lease_mid_batch_cannot_checkpoint_and_drops_the_shard(
    kinesis_local, make_kinesis_stream, dynamodb, table, tmp_path, caplog
):
    stream = make_kinesis_stream(kinesis_local, shards=1)
    write(kinesis_local, stream, range(10))
    a, seen_a = consumer("a", kinesis_local, stream, dynamodb, table, tmp_path)
    b, seen_b = consumer("b", kinesis_local, stream, dynamodb, table, tmp_path)
    wait_until(lambda: (a.poll_once() or True) and len(seen_a.seen) == 10, 20, "a's first batch")
    (shard,) = [s.shard_id for s in a.reader.list_shards()]
    checkpoint = a.checkpoints.load(GROUP, shard)

    write(kinesis_local, stream, range(10, 20))

    def stall() -> None:
        # a hangs in delivery past its lease; b takes the shard over meanwhile
        seen_a.during_delivery = None
        checker = store("checker", dynamodb, table)
        wait_until(
            lambda: checker.lease(GROUP, shard)[1] < time.time() * 1000,
            LEASE + 5,
            "a's lease to lapse",
        )
        wait_until(lambda: (b.poll_once() or True) and len(seen_b.seen) == 10, 20, "b")

    seen_a.during_delivery = stall
    wait_until(lambda: (a.poll_once() or True) and len(seen_a.seen) == 20, 20, "a's second batch")

    # a delivered its batch (at least once: b did too), but its checkpoint did not land
    assert any("not saved: a lost the lease" in r.getMessage() for r in caplog.records)
    assert numbers_of(seen_b.events()) == list(range(10, 20))
    new = b.checkpoints.load(GROUP, shard)
    assert new is not None and checkpoint is not None and new.key() > checkpoint.key()
    assert a.leases is not None and a.leases.held(a.reader.list_shards()) == []
    write(kinesis_local, stream, range(20, 25))
    assert not a.poll_once()
    wait_until(lambda: (b.poll_once() or True) and len(seen_b.seen) == 15, 20, "b goes on")
    assert len(seen_a.seen) == 20


class SharedRecorder(Recorder):
    """Built by ``build_target`` from the config; every instance notes into ``log``."""

    log: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, config: Any, context: Any) -> None:
        super().__init__()
        self.seen = SharedRecorder.log


def test_consumer_sets_from_config_hand_shards_over_when_one_stops(
    kinesis_local, stream, dynamodb, table, tmp_path, monkeypatch
):
    registry = dict(consumers.targets.REGISTRY)
    registry["interactions"] = f"{__name__}:SharedRecorder"
    monkeypatch.setattr(consumers.targets, "REGISTRY", MappingProxyType(registry))
    monkeypatch.setattr(SharedRecorder, "log", [])
    document = {
        "namespaces": {"shop": {"eventTargets": [{"type": "interactions", "name": "recorder"}]}},
        "stream": {"type": "kinesis", "streamName": stream, "endpointUrl": kinesis_local},
        "checkpoints": {
            "type": "dynamodb",
            "tableName": table,
            "endpointUrl": dynamodb,
            "leaseSeconds": LEASE,
        },
        "consumer": {"pollIntervalMs": 50},
        "dataDir": str(tmp_path),
    }
    config = load_config(json.loads(json.dumps(document)))
    assert isinstance(build_checkpoints(config, "x"), DynamoCheckpointStore)
    default = load_config({**document, "checkpoints": {"type": "sqlite"}})
    sqlite = build_checkpoints(default, "x")
    assert isinstance(sqlite, SqliteCheckpointStore)
    sqlite.close()

    write(kinesis_local, stream, range(100))
    first = ConsumerSet(config)
    first.start()
    try:
        wait_until(lambda: len(SharedRecorder.log) >= 100, 30, "the first set to deliver 100")
        checker = store("checker", dynamodb, table)
        shards = [
            s.shard_id for s in KinesisReader(kinesis_client(kinesis_local), stream).list_shards()
        ]
        wait_until(
            lambda: all(checker.lease(GROUP, s)[0] == first.owner for s in shards),
            10,
            "the first set to lease every shard",
        )
    finally:
        first.stop()
    # a clean stop releases every lease: the next process starts at once, from the checkpoints
    assert all(checker.lease(GROUP, s)[0] is None for s in shards)

    write(kinesis_local, stream, range(100, 150))
    second = ConsumerSet(config)
    assert second.owner != first.owner
    started = time.monotonic()
    second.start()
    try:
        wait_until(lambda: len(SharedRecorder.log) >= 150, 30, "the second set to deliver 50")
    finally:
        second.stop()
    assert time.monotonic() - started < LEASE * 3
    delivered = Counter(event for _, event in SharedRecorder.log)
    assert len(delivered) == 150
    assert set(delivered.values()) == {1}


class FlakyLeaseStore:
    """A lease store whose renewals can be made to fail, as when DynamoDB is unreachable."""

    lease_seconds = 30.0

    def __init__(self) -> None:
        self.failing = False

    def acquire(self, group: str, shard_id: str) -> bool:
        return True

    def renew(self, group: str, shard_id: str) -> bool:
        if self.failing:
            raise Unavailable("lease table unreachable")
        return True

    def release(self, group: str, shard_id: str) -> None:
        pass


def test_a_lease_that_cannot_be_renewed_stops_being_read_when_it_runs_out() -> None:
    clock = [1000.0]
    store = FlakyLeaseStore()
    leases = ShardLeases(store, GROUP, monotonic=lambda: clock[0])  # type: ignore[arg-type]
    shard = Shard("shard-0", 0, 2**128 - 1)
    assert leases.held([shard]) == [shard]
    store.failing = True
    clock[0] += 20  # renewals fail from here on, but the lease is still good
    assert leases.held([shard]) == [shard]
    clock[0] += 8  # 28 s: past the lease less its margin for clock drift
    assert leases.held([shard]) == []
    store.failing = False
    clock[0] += 10  # the next renewal succeeds: reading resumes
    assert leases.held([shard]) == [shard]
