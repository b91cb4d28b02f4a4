"""kill -9 of the service on Kinesis while PutRecords calls are in flight: every event that was
answered 202 is in the stream (an answer means durable; the calls still in flight were never
answered)."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from schemas.codec import Codec
from streams.kinesis import KinesisReader, list_shards
from tests.fixtures.servers import kinesis_client, wait_until
from tests.p13n.test_kinesis_service import kinesis_config
from tests.streams.test_pipelined_producer import ShardProxy


def post_until_stopped(url: str, client: int, accepted: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        index = 0
        while not stop.is_set():
            event_id = f"{client}-{index}"
            index += 1
            body = {
                "sessionId": f"session-{client}",
                "eventList": [{"eventType": "View", "itemId": "i", "eventId": event_id}],
            }
            try:
                response = http.post("/events/shop", json=body)
            except httpx.HTTPError:
                return  # the service is gone
            if response.status_code == 202:
                accepted.append(event_id)


def stored_event_ids(endpoint: str, stream: str) -> list[str]:
    codec = Codec.packaged()
    reader = KinesisReader(kinesis_client(endpoint), stream)
    seen: list[str] = []
    for shard in reader.list_shards():
        cursor = reader.open(shard.shard_id)
        while True:
            batch = cursor.read(10_000)
            for record in batch.records:
                seen.extend(e["eventId"] for e in codec.decode(record.data)[1]["eventList"])
            if not batch.records and batch.millis_behind_latest == 0:
                break
    return seen


def test_kill_9_mid_call_loses_no_accepted_event(
    kinesis_local: str, make_kinesis_stream: Any, service_factory: Any
) -> None:
    stream = make_kinesis_stream(kinesis_local, shards=4)
    proxy = ShardProxy(kinesis_local, list_shards(kinesis_client(kinesis_local), stream))
    try:
        service = service_factory(kinesis_config(proxy.url, stream))
        accepted: list[str] = []
        stop = threading.Event()
        with ThreadPoolExecutor(12) as pool:
            for client in range(12):
                pool.submit(post_until_stopped, service.url, client, accepted, stop)
            wait_until(lambda: len(accepted) >= 200, 30, "200 accepted events")
            # From now on the calls carrying one shard hang in the proxy, in flight.
            proxy.held = proxy.map.shards[0].shard_id
            wait_until(proxy.holding.is_set, 10, "a call in flight for the held shard")
            service.stop(signal.SIGKILL)
            stop.set()
        proxy.release.set()  # the held calls reach the stream now, or never: nobody was answered
        answered = set(accepted)
        stored = set(stored_event_ids(kinesis_local, stream))
        assert len(answered) >= 200
        assert answered - stored == set()
    finally:
        proxy.release.set()
        proxy.close()
