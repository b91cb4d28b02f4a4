"""Benchmark of the read side: stream → archive, stream → Personalize (paced), archive replay.

Everything runs through the real code: records are written to an embedded stream, read back by
a ``GroupConsumer`` (the same runner `p13n consume` uses) and delivered by the real targets;
Personalize is our fake server (real HTTP, the target's own signed PutEvents requests), in a
process of its own; it counts the calls that arrive in any 1-second window by its own clock.

    .venv/bin/python -m bench.consume [--events 50000] [--personalize-events 8000]

Prints, per scenario: events, seconds, events/s, CPU seconds and events per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from consumers.runner import GroupConsumer
from consumers.supervisor import ConsumerSet
from schemas.codec import INTERACTION, Codec
from schemas.config import Config, load_config
from schemas.records import new_record_id
from streams.base import Entry
from streams.embedded import EmbeddedWriter

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: records spread over the following hours


def record(codec: Codec, n: int, sessions: int) -> Entry:
    session = f"session-{n % sessions:05d}"
    received = BASE_MS + n * 100  # 10 events a second of simulated traffic
    data = codec.encode(
        INTERACTION,
        {
            "recordId": new_record_id(received),
            "namespace": "bench",
            "receivedAt": received,
            "partitionKeyField": "sessionId",
            "sessionId": session,
            "userId": f"user-{n % sessions:05d}",
            "eventList": [
                {
                    "eventId": None,
                    "eventType": "View" if n % 10 else "Purchase",
                    "eventValue": None,
                    "itemId": f"item-{(n * 7919) % 5000}",
                    "impression": [],
                    "properties": '{"deviceType":"Desktop"}',
                    "recommendationId": None,
                    "sentAt": received,
                    "metricAttribution": None,
                }
            ],
            "experimentConversions": [],
            "context": {"ua": "bench/1"},
        },
    )
    return Entry(session, data)


def fill(path: str, events: int, sessions: int) -> None:
    codec = Codec.packaged()
    writer = EmbeddedWriter(path, shards=4)
    for start in range(0, events, 5000):
        writer.put_batch(
            [record(codec, n, sessions) for n in range(start, min(events, start + 5000))]
        )
    writer.close()


def config_for(data_dir: str, target: dict[str, Any]) -> Config:
    document = {
        "stream": {"type": "embedded", "shards": 4},
        "dataDir": data_dir,
        "namespaces": {"bench": {"eventTargets": [target]}},
    }
    return load_config(document, source="bench")


def drain(group: GroupConsumer, expected: int, delivered: Callable[[], int]) -> tuple[float, float]:
    """Poll until ``delivered()`` reaches ``expected``; (wall seconds, CPU seconds)."""
    group.target.open()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        while delivered() < expected:
            if not group.poll_once():
                time.sleep(0.01)
    finally:
        group.target.close()
    return time.perf_counter() - wall, time.process_time() - cpu


class Counting:
    """Wraps a target to count what it delivered."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.kinds = inner.kinds
        self.count = 0

    def open(self) -> None:
        self.inner.open()

    def deliver(self, batch: Any) -> Any:
        failures = self.inner.deliver(batch)
        self.count += len(batch) - len(failures)
        return failures

    def close(self) -> None:
        self.inner.close()


def consumer_for(config: Config) -> tuple[GroupConsumer, Counting]:
    consumers = ConsumerSet(config)
    group = consumers.build(consumers.targets[0])
    counting = Counting(group.target)
    group.target = counting
    return group, counting


def archive_scenario(data_dir: str, events: int) -> dict[str, Any]:
    config = config_for(
        data_dir, {"type": "archive", "name": "archive", "uri": f"file://{data_dir}/archive"}
    )
    group, counting = consumer_for(config)
    wall, cpu = drain(group, events, lambda: counting.count)
    return {
        "scenario": "stream -> archive",
        "events": counting.count,
        "seconds": wall,
        "cpu_seconds": cpu,
    }


def _fake_personalize(conn: Any) -> None:
    """Child process: run the fake until asked for its figures (it must not share our GIL)."""
    from tests.fixtures.fake_personalize import FakePersonalize

    fake = FakePersonalize()
    conn.send((fake.endpoint, fake.tracking_id))
    conn.recv()
    conn.send((fake.call_count(), fake.max_calls_per_second("PutEvents")))
    fake.close()


def personalize_scenario(data_dir: str, events: int, rate: float) -> dict[str, Any]:
    import multiprocessing

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(target=_fake_personalize, args=(theirs,))
    child.start()
    try:
        endpoint, tracking_id = ours.recv()
        config = config_for(
            data_dir,
            {
                "type": "personalize-event-tracker",
                "name": "personalize",
                "trackingId": tracking_id,
                "endpointUrl": endpoint,
                "region": "us-east-1",
                "maxCallsPerSecond": rate,
            },
        )
        group, counting = consumer_for(config)
        wall, cpu = drain(group, events, lambda: counting.count)
        ours.send("figures")
        calls, max_window = ours.recv()
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    return {
        "scenario": f"stream -> Personalize (maxCallsPerSecond {rate:g})",
        "events": counting.count,
        "seconds": wall,
        "cpu_seconds": cpu,
        "calls": calls,
        "calls_per_second": calls / wall,
        "max_calls_in_any_second": max_window,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the consumers.")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--personalize-events", type=int, default=8_000)
    parser.add_argument("--rate", type=float, default=500)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as data_dir:
        fill(os.path.join(data_dir, "stream.db"), args.events, sessions=2000)
        results.append(archive_scenario(data_dir, args.events))
        results.append(replay_scenario(data_dir, args.events))
    with tempfile.TemporaryDirectory() as data_dir:
        # Many sessions, one event each per batch: packing cannot merge them, so every event is
        # a call and the pacing is what limits throughput.
        fill(
            os.path.join(data_dir, "stream.db"),
            args.personalize_events,
            sessions=args.personalize_events,
        )
        results.append(personalize_scenario(data_dir, args.personalize_events, args.rate))

    print(f"\nconsumers — {os.cpu_count()} cores\n")
    header = f"{'scenario':48} {'events':>8} {'seconds':>8} {'events/s':>10} {'CPU s':>7} {'ev/CPU-s':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['scenario']:48} {r['events']:>8} {r['seconds']:>8.2f} {r['events'] / r['seconds']:>10.0f} "
            f"{r['cpu_seconds']:>7.2f} {r['events'] / max(r['cpu_seconds'], 1e-9):>9.0f}"
        )
        if "calls" in r:
            print(
                f"{'':48} PutEvents calls {r['calls']}, {r['calls_per_second']:.0f}/s on average, "
                f"at most {r['max_calls_in_any_second']} in any 1-second window"
            )
    print(json.dumps(results))


def replay_scenario(data_dir: str, events: int) -> dict[str, Any]:
    """Read the archive written by the archive scenario and filter it to a one-hour window
    (a dry run: everything but the delivery, which the other scenarios measure)."""
    from datetime import UTC, datetime, timedelta

    from consumers.replay import replay

    config = config_for(
        data_dir, {"type": "archive", "name": "archive", "uri": f"file://{data_dir}/archive"}
    )
    start = datetime.fromtimestamp(BASE_MS / 1000, UTC)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = replay(
        f"file://{data_dir}/archive",
        "archive",
        config,
        start=start,
        end=start + timedelta(hours=1),
        dry_run=True,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "scenario": f"replay read + filter (1 h window, {summary.matched} matched)",
        "events": summary.read,
        "seconds": wall,
        "cpu_seconds": cpu,
    }


if __name__ == "__main__":
    main()
