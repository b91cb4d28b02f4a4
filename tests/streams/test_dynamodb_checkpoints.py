"""DynamoDB checkpoints and shard leases against a real DynamoDB wire protocol (moto server).

Each test has its own table; owners are separate store objects sharing nothing but the table,
as two ``p13n consume`` processes would. The race goes through ``SerialProxy``: moto checks
conditions without a lock, DynamoDB does not (see ``tests.fixtures.serial_proxy``).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from aws.clients import client
from schemas.config import load_config, validate_document
from schemas.errors import NotFound
from streams.base import SHARD_END, LeaseLost, LeaseStore, Position
from streams.dynamodb_checkpoints import DynamoCheckpointStore, create_table
from tests.fixtures.serial_proxy import SerialProxy

GROUP = "shop/personalize"


@pytest.fixture
def dynamodb(moto_server: str) -> Any:
    return client("dynamodb", endpoint_url=moto_server, max_attempts=1)


@pytest.fixture
def table(dynamodb: Any) -> str:
    name = f"checkpoints-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb, name)
    return name


class Clock:
    """A shared wall clock the test moves by hand: leases expire without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def store(
    dynamodb: Any,
    table: str,
    owner: str,
    lease_seconds: float = 30.0,
    clock: Clock | None = None,
) -> DynamoCheckpointStore:
    return DynamoCheckpointStore(dynamodb, table, owner, lease_seconds, clock=clock or time.time)


def test_it_is_a_lease_store_and_the_table_has_the_documented_keys(dynamodb, table):
    assert isinstance(store(dynamodb, table, "a"), LeaseStore)
    keys = dynamodb.describe_table(TableName=table)["Table"]["KeySchema"]
    assert keys == [
        {"AttributeName": "group", "KeyType": "HASH"},
        {"AttributeName": "shardId", "KeyType": "RANGE"},
    ]
    create_table(dynamodb, table)  # a second time: left as it is


def test_saved_positions_load_back_per_group_and_shard(dynamodb, table):
    a = store(dynamodb, table, "a")
    assert a.load(GROUP, "shardId-000000000000") is None
    assert a.acquire(GROUP, "shardId-000000000000")
    assert a.load(GROUP, "shardId-000000000000") is None  # a lease alone is no checkpoint
    a.save(GROUP, "shardId-000000000000", Position("49650000000000000000000000000000001", 3))
    assert a.acquire("shop/archive", "shardId-000000000000")
    a.save("shop/archive", "shardId-000000000000", SHARD_END)

    other = store(dynamodb, table, "b")  # what another process reads
    assert other.load(GROUP, "shardId-000000000000") == Position(
        "49650000000000000000000000000000001", 3
    )
    assert other.load("shop/archive", "shardId-000000000000") == SHARD_END
    assert other.load(GROUP, "shardId-000000000001") is None

    a.save(GROUP, "shardId-000000000000", Position("49650000000000000000000000000000009", 0))
    assert other.load(GROUP, "shardId-000000000000") == Position(
        "49650000000000000000000000000000009", 0
    )


def test_two_owners_racing_for_each_shard_exactly_one_wins(moto_server, table):
    proxy = SerialProxy(moto_server)
    try:
        race_for_shards(proxy.url, table)
    finally:
        proxy.close()


def race_for_shards(endpoint: str, table: str) -> None:
    # one client per owner, as in two processes
    owners = [
        store(client("dynamodb", endpoint_url=endpoint, max_attempts=1), table, f"owner-{n}")
        for n in range(2)
    ]
    shards = [f"shardId-{n:012d}" for n in range(20)]
    won: dict[str, list[str]] = {shard: [] for shard in shards}
    start = threading.Barrier(len(owners))

    def race(owner: DynamoCheckpointStore) -> None:
        for shard in shards:
            start.wait()
            if owner.acquire(GROUP, shard):
                won[shard].append(owner.owner)

    threads = [threading.Thread(target=race, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(len(winners) == 1 for winners in won.values()), won
    for shard, (winner,) in won.items():
        assert owners[0].lease(GROUP, shard)[0] == winner
        loser = next(o for o in owners if o.owner != winner)
        assert not loser.acquire(GROUP, shard)


def test_an_expired_lease_is_taken_over_and_the_old_owner_can_no_longer_save(dynamodb, table):
    clock = Clock()
    a = store(dynamodb, table, "a", lease_seconds=0.5, clock=clock)
    b = store(dynamodb, table, "b", lease_seconds=30, clock=clock)
    shard = "shardId-000000000000"
    assert a.acquire(GROUP, shard)
    a.save(GROUP, shard, Position("100"))
    assert not b.acquire(GROUP, shard)  # a's lease is live

    clock.advance(0.6)  # a stopped renewing
    assert b.acquire(GROUP, shard)
    assert b.load(GROUP, shard) == Position("100")  # b goes on from a's checkpoint
    owner, expires, counter = b.lease(GROUP, shard)
    assert owner == "b"
    assert expires > clock.now * 1000 + 25_000
    assert counter == 2  # a's acquisition and b's

    with pytest.raises(LeaseLost) as lost:
        a.save(GROUP, shard, Position("150"))
    assert lost.value.code == "LeaseLost"
    assert not a.renew(GROUP, shard)
    assert not a.acquire(GROUP, shard)  # b's lease is live now
    b.save(GROUP, shard, Position("200"))
    assert a.load(GROUP, shard) == Position("200")


def test_renewal_keeps_a_lease_past_its_first_expiry(dynamodb, table):
    clock = Clock()
    a = store(dynamodb, table, "a", lease_seconds=0.6, clock=clock)
    b = store(dynamodb, table, "b", clock=clock)
    shard = "shardId-000000000003"
    assert a.acquire(GROUP, shard)
    for _ in range(3):
        clock.advance(0.3)
        assert a.renew(GROUP, shard)
    assert not b.acquire(GROUP, shard)  # 0.9 s after acquiring, still a's
    assert a.lease(GROUP, shard)[2] == 4
    assert a.acquire(GROUP, shard)  # already ours: fine


def test_save_needs_the_lease(dynamodb, table):
    a = store(dynamodb, table, "a")
    with pytest.raises(LeaseLost):
        a.save(GROUP, "shardId-000000000000", Position("1"))
    assert a.load(GROUP, "shardId-000000000000") is None


def test_release_lets_another_owner_in_at_once_and_keeps_the_checkpoint(dynamodb, table):
    a = store(dynamodb, table, "a")
    b = store(dynamodb, table, "b")
    shard = "shardId-000000000000"
    assert a.acquire(GROUP, shard)
    a.save(GROUP, shard, Position("7", 2))
    b.release(GROUP, shard)  # not b's: nothing happens
    assert not b.acquire(GROUP, shard)

    a.release(GROUP, shard)
    assert a.lease(GROUP, shard)[0] is None
    assert not a.renew(GROUP, shard)
    assert b.acquire(GROUP, shard)
    assert b.load(GROUP, shard) == Position("7", 2)
    with pytest.raises(LeaseLost):
        a.save(GROUP, shard, Position("8"))


def test_a_missing_table_is_a_translated_error(dynamodb):
    missing = store(dynamodb, f"missing-{uuid.uuid4().hex[:8]}", "a")
    with pytest.raises(NotFound) as error:
        missing.load(GROUP, "shardId-000000000000")
    assert error.value.code == "ResourceNotFoundException"
    with pytest.raises(NotFound):
        missing.acquire(GROUP, "shardId-000000000000")


def test_the_config_names_the_store_and_is_checked(dynamodb, table, moto_server):
    base = {"namespaces": {"shop": {"eventTargets": [{"type": "interactions"}]}}}
    assert load_config(base).checkpoints == {"type": "sqlite"}
    errors = validate_document({**base, "checkpoints": {"type": "dynamodb"}})
    assert errors == [("$.checkpoints", "'tableName' is a required property")]
    errors = validate_document({**base, "checkpoints": {"type": "sqlite", "table": "x"}})
    assert [path for path, _ in errors] == ["$.checkpoints"]

    settings = {"type": "dynamodb", "tableName": table, "endpointUrl": moto_server}
    config = load_config({**base, "checkpoints": {**settings, "leaseSeconds": 12}})
    built = DynamoCheckpointStore.from_settings(config.checkpoints, "host:1:abc")
    assert (built.owner, built.lease_seconds) == ("host:1:abc", 12.0)
    assert built.acquire(GROUP, "shardId-000000000000")
    assert store(dynamodb, table, "x").lease(GROUP, "shardId-000000000000")[0] == "host:1:abc"
