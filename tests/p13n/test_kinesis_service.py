"""The service on Kinesis (kinesis-local): exact counts, aggregation, order, resharding, outages."""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from schemas.codec import Codec
from schemas.records import with_partition_key
from streams.aggregation import unpack
from streams.hashing import hash_key
from streams.kinesis import KinesisReader
from tests.fixtures.servers import free_port, kinesis_client
from tests.fixtures.service import wait_until


def kinesis_config(endpoint: str, stream: str, **stream_options: Any) -> dict[str, Any]:
    return {
        "version": "k1",
        "stream": {
            "type": "kinesis",
            "streamName": stream,
            "region": "us-east-1",
            "endpointUrl": endpoint,
            **stream_options,
        },
        "namespaces": {"shop": {"eventTargets": [{"type": "interactions"}]}},
    }


def post_session(url: str, client_number: int, count: int) -> list[int]:
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for index in range(count):
            response = http.post(
                "/events/shop",
                json={
                    "sessionId": f"session-{client_number}",
                    "userId": f"user-{client_number}",
                    "eventList": [
                        {
                            "eventType": "View",
                            "itemId": f"i{index}",
                            "eventId": f"{client_number}-{index}",
                        }
                    ],
                },
            )
            statuses.append(response.status_code)
    return statuses


def raw_records(endpoint: str, stream: str) -> dict[str, list[dict[str, Any]]]:
    """Every Kinesis record of every shard as GetRecords returns it (not deaggregated)."""
    kinesis = kinesis_client(endpoint)
    out: dict[str, list[dict[str, Any]]] = {}
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            records.extend(page["Records"])
            iterator = page.get("NextShardIterator")
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
        out[shard["ShardId"]] = records
    return out


def test_ten_thousand_events_land_exactly_once_aggregated_per_shard_and_in_order(
    kinesis_local, make_kinesis_stream, service_factory
):
    stream = make_kinesis_stream(kinesis_local, shards=4)
    service = service_factory(kinesis_config(kinesis_local, stream))

    with ThreadPoolExecutor(50) as pool:
        statuses = [
            s
            for batch in pool.map(lambda n: post_session(service.url, n, 200), range(50))
            for s in batch
        ]
    assert statuses == [202] * 10_000

    kinesis = kinesis_client(kinesis_local)
    ranges = {
        s["ShardId"]: (
            int(s["HashKeyRange"]["StartingHashKey"]),
            int(s["HashKeyRange"]["EndingHashKey"]),
        )
        for s in kinesis.list_shards(StreamName=stream)["Shards"]
    }
    codec = Codec.packaged()
    per_session: dict[str, list[str]] = defaultdict(list)
    raw_count = 0
    for shard_id, records in raw_records(kinesis_local, stream).items():
        low, high = ranges[shard_id]
        for record in records:
            raw_count += 1
            users = unpack(record["Data"])
            assert users is not None, "every stream record is a KPL aggregate"
            for partition_key, _explicit, data in users:
                # Aggregates never mix shards: every user record belongs where it was read.
                assert low <= hash_key(partition_key) <= high
                fields = with_partition_key(codec.decode(data)[1], partition_key)
                per_session[fields["sessionId"]].extend(e["eventId"] for e in fields["eventList"])
    assert sum(len(ids) for ids in per_session.values()) == 10_000
    for client_number in range(50):
        assert per_session[f"session-{client_number}"] == [
            f"{client_number}-{i}" for i in range(200)
        ]
    # Aggregation: far fewer Kinesis records than events. With 50 clients each waiting for
    # its answer, a batch holds at most 50 events over 4 shards, so ~12 per aggregate at best.
    assert raw_count * 3 <= 10_000, raw_count
    print(f"\n10,000 events became {raw_count} Kinesis records")


def test_writes_keep_flowing_through_a_shard_split(
    kinesis_local, make_kinesis_stream, service_factory
):
    stream = make_kinesis_stream(kinesis_local, shards=2)
    service = service_factory(kinesis_config(kinesis_local, stream))
    assert post_session(service.url, 1, 50) == [202] * 50

    kinesis = kinesis_client(kinesis_local)
    parent = kinesis.list_shards(StreamName=stream)["Shards"][0]
    low = int(parent["HashKeyRange"]["StartingHashKey"])
    high = int(parent["HashKeyRange"]["EndingHashKey"])
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str((low + high) // 2)
    )
    wait_until(
        lambda: (
            kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            == "ACTIVE"
        ),
        timeout=20,
    )
    with ThreadPoolExecutor(8) as pool:
        statuses = [
            s
            for batch in pool.map(lambda n: post_session(service.url, n, 50), range(2, 10))
            for s in batch
        ]
    assert statuses == [202] * 400

    reader = KinesisReader(kinesis, stream)
    shards = reader.list_shards()
    assert len(shards) == 4 and sum(s.closed for s in shards) == 1
    children = [s for s in shards if s.parent_ids == (parent["ShardId"],)]
    assert len(children) == 2
    codec = Codec.packaged()
    seen: list[str] = []
    for shard in shards:
        cursor = reader.open(shard.shard_id)
        for _ in range(20):
            batch = cursor.read(1000)
            seen.extend(
                e["eventId"] for r in batch.records for e in codec.decode(r.data)[1]["eventList"]
            )
            if batch.end_of_shard or not batch.records:
                break
    assert sorted(seen) == sorted(
        [f"1-{i}" for i in range(50)] + [f"{n}-{i}" for n in range(2, 10) for i in range(50)]
    )


def test_an_unreachable_stream_answers_503_with_retry_after_at_once(service_factory):
    closed = f"http://127.0.0.1:{free_port()}"
    service = service_factory(kinesis_config(closed, "nowhere"), ready=False)
    wait_until(lambda: httpx.get(f"{service.url}/healthz").status_code == 200, timeout=20)
    body = {"sessionId": "s", "eventList": [{"eventType": "View"}]}

    with service.client() as http:
        started = time.monotonic()
        first = http.post("/events/shop", json=body)
        first_seconds = time.monotonic() - started
        assert first.status_code == 503
        assert first.json()["code"] == "StreamUnavailable"
        assert set(first.json()) == {"type", "code", "message"}
        assert int(first.headers["retry-after"]) >= 1
        assert first_seconds < 10  # bounded by the writer's deadline, not hanging

        started = time.monotonic()
        second = http.post("/events/shop", json=body)
        assert second.status_code == 503
        assert time.monotonic() - started < 0.5  # refused at once while the stream is down

        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
