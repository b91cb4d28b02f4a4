"""The producer on Kinesis with several calls in flight, over real sockets (kinesis-local).

A proxy in front of the emulator sees every PutRecords: it can hold the calls that carry a
record for one shard (so that call stays in flight while the test watches the others), throttle
one shard's entries, and it records which shards were in flight together.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from schemas.config import ProducerConfig
from streams.base import Entry, Shard
from streams.hashing import ShardMap, hash_key
from streams.kinesis import KinesisReader, KinesisWriter, list_shards
from streams.producer import Producer
from tests.fixtures.kinesis_proxy import KinesisFaultProxy
from tests.fixtures.servers import kinesis_client, wait_until

MakeStream = Callable[..., str]


class ShardProxy(KinesisFaultProxy):
    """Holds calls that touch ``held``, throttles entries of ``throttled`` (shard ids), and
    counts concurrent calls, per call and per shard."""

    def __init__(self, upstream: str, shards: list[Shard]) -> None:
        super().__init__(upstream)
        self.map = ShardMap(shards)
        self.held: str | None = None
        self.holding = threading.Event()
        self.release = threading.Event()
        self.throttled: str | None = None
        self.active = 0
        self.most_active = 0
        self.shard_overlaps = 0  # calls that began while another call carried one of their shards
        self._in_flight: Counter[str] = Counter()
        self._mine = threading.local()

    def shard_of(self, record: dict[str, Any]) -> str:
        explicit = record.get("ExplicitHashKey")
        key = int(explicit) if explicit else hash_key(record["PartitionKey"])
        return self.map.shard_for(key).shard_id

    def verdicts(self, request: dict[str, Any]) -> list[str | None]:
        shards = [self.shard_of(r) for r in request["Records"]]
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            if any(self._in_flight[s] for s in set(shards)):
                self.shard_overlaps += 1
            self._in_flight.update(set(shards))
        self._mine.shards = set(shards)
        if self.held is not None and self.held in shards:
            self.holding.set()
            self.release.wait(20)
        out: list[str | None] = []
        for shard in shards:
            if shard == self.throttled:
                with self._lock:
                    self.throttled_entries += 1
                out.append("ProvisionedThroughputExceededException")
            else:
                out.append(None)
        return out

    def answer(self, failed: int, results: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            self.active -= 1
            self._in_flight.subtract(self._mine.shards)
        return super().answer(failed, results)


@pytest.fixture
def four_shards(
    kinesis_local: str, make_kinesis_stream: MakeStream
) -> Iterator[tuple[str, ShardProxy]]:
    stream = make_kinesis_stream(kinesis_local, shards=4)
    proxy = ShardProxy(kinesis_local, list_shards(kinesis_client(kinesis_local), stream))
    try:
        yield stream, proxy
    finally:
        proxy.release.set()
        proxy.close()


def producer_for(proxy: ShardProxy, stream: str, **settings: Any) -> Producer:
    writer = KinesisWriter(kinesis_client(proxy.url), stream)
    producer = Producer(writer, ProducerConfig(**{"linger_ms": 1, "max_in_flight": 4, **settings}))
    producer.start()
    return producer


def keys_by_shard(proxy: ShardProxy, per_shard: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    n = 0
    while min((len(v) for v in out.values()), default=0) < per_shard or len(out) < 4:
        key = f"session-{n}"
        n += 1
        shard = proxy.map.shard_for(hash_key(key)).shard_id
        if len(out[shard]) < per_shard:
            out[shard].append(key)
    return dict(out)


def read_back(endpoint: str, stream: str) -> dict[str, list[bytes]]:
    """Every user record of the stream, by partition key, in stream order."""
    reader = KinesisReader(kinesis_client(endpoint), stream)
    out: dict[str, list[bytes]] = defaultdict(list)
    for shard in reader.list_shards():
        cursor = reader.open(shard.shard_id)
        while True:
            batch = cursor.read(10_000)
            for record in batch.records:
                out[record.partition_key].append(record.data)
            if not batch.records and batch.millis_behind_latest == 0:
                break
    return dict(out)


def numbered(key: str, index: int) -> Entry:
    return Entry(key, f"{key}:{index:04d}".encode())


def test_calls_run_in_parallel_per_shard_and_keep_each_sessions_order(
    kinesis_local: str, four_shards: tuple[str, ShardProxy]
) -> None:
    stream, proxy = four_shards
    keys = keys_by_shard(proxy, 5)
    held = sorted(keys)[0]
    proxy.held = held
    producer = producer_for(proxy, stream)
    sent: dict[str, int] = Counter()

    async def main() -> None:
        def put(key: str) -> asyncio.Future[Any]:
            index = sent[key]
            sent[key] += 1
            return asyncio.ensure_future(producer.put(numbered(key, index)))

        # The held shard's first call stays in flight; its later entries queue behind it.
        behind = [put(k) for k in keys[held]]
        await asyncio.to_thread(proxy.holding.wait, 10)
        behind += [put(k) for k in keys[held] for _ in range(10)]
        others = [k for shard, ks in keys.items() if shard != held for k in ks]
        # Meanwhile the other shards go on, wave after wave, each session in put order.
        for _ in range(8):
            await asyncio.wait_for(asyncio.gather(*(put(k) for k in others for _ in range(3))), 20)
        assert not any(f.done() for f in behind)  # still waiting for their shard
        proxy.release.set()
        await asyncio.wait_for(asyncio.gather(*behind), 20)

    try:
        asyncio.run(main())
    finally:
        producer.close()

    assert proxy.most_active >= 2  # calls overlapped ...
    assert proxy.shard_overlaps == 0  # ... but never two for one shard
    stored = read_back(kinesis_local, stream)
    assert {k: len(v) for k, v in stored.items()} == dict(sent)
    for key, data in stored.items():
        assert data == [numbered(key, i).data for i in range(sent[key])], key


def test_a_throttled_shard_does_not_stall_the_others(
    kinesis_local: str, four_shards: tuple[str, ShardProxy]
) -> None:
    stream, proxy = four_shards
    keys = keys_by_shard(proxy, 3)
    slow = sorted(keys)[1]
    proxy.throttled = slow
    producer = producer_for(proxy, stream, put_timeout_ms=30_000)
    counts: Counter[str] = Counter()

    async def main() -> None:
        def put(key: str) -> asyncio.Future[Any]:
            index = counts[key]
            counts[key] += 1
            return asyncio.ensure_future(producer.put(numbered(key, index)))

        throttled = [put(k) for k in keys[slow] for _ in range(5)]
        others = [k for shard, ks in keys.items() if shard != slow for k in ks]
        for _ in range(5):
            await asyncio.wait_for(asyncio.gather(*(put(k) for k in others for _ in range(4))), 20)
        await asyncio.to_thread(wait_until, lambda: proxy.throttled_entries >= 3, 10.0)
        assert not any(f.done() for f in throttled)  # retried with backoff, not failed
        proxy.throttled = None
        await asyncio.wait_for(asyncio.gather(*throttled), 20)

    try:
        asyncio.run(main())
    finally:
        producer.close()

    stored = read_back(kinesis_local, stream)
    assert {k: len(v) for k, v in stored.items()} == dict(counts)
    for key, data in stored.items():
        assert data == [numbered(key, i).data for i in range(counts[key])], key
