"""Consumers under faults, end to end: real ``p13n serve`` / ``p13n consume`` processes, real
sockets, the embedded stream on disk.

* Personalize throttling and failing at random: every event arrives, each session in order,
  nothing is dead-lettered.
* ``kill -9`` of ``p13n consume`` in the middle of a delivery, then a restart: nothing is lost,
  and only the batch that was in flight (past the last checkpoint) comes again.
* A target that fails forever next to a healthy one: the broken group dead-letters, the healthy
  group keeps up with the traffic as it flows.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.fake_personalize import FakePersonalize
from tests.fixtures.service import P13N, Service, wait_until

NS = "shop"


# -- helpers ----------------------------------------------------------------------------------


def embedded_config(*targets: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "faults-e2e",
        "stream": {"type": "embedded", "shards": 4},
        "consumer": {"pollIntervalMs": 50},
        "namespaces": {NS: {"eventTargets": list(targets)}},
    }


def post(http: httpx.Client, session: str, event_id: str) -> None:
    response = http.post(
        f"/events/{NS}",
        json={
            "sessionId": session,
            "userId": f"user-{session}",
            "eventList": [{"eventType": "View", "itemId": "item-1", "eventId": event_id}],
        },
    )
    assert response.status_code == 202, response.text


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def max_metric(text: str, name: str, **labels: str) -> float:
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return max(values, default=0.0)


def dead_letters(service: Service, *targets: str) -> list[dict[str, Any]]:
    args = ["dead-letters", "list"]
    for target in targets:
        args += ["--target", target]
    done = service.cli(*args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


class Receiver:
    """A local HTTP endpoint for the ``http`` target: records every event id it is sent (in
    arrival order, duplicates included) and answers ``status`` after ``delay`` seconds.

    With ``hold_after=N``, the first request that arrives once N event ids have been seen is
    recorded and then held unanswered until ``release()``; ``held`` is set meanwhile and
    ``held_ids`` holds that request's event ids."""

    def __init__(self, status: int = 200, delay: float = 0.0, hold_after: int | None = None):
        self.status = status
        self.delay = delay
        self.hold_after = hold_after
        self.held = threading.Event()
        self.held_ids: list[str] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)

    def count(self) -> int:
        with self._lock:
            return len(self._ids)

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _received(self, ids: list[str]) -> bool:
        """Record ``ids``; True when this request is the one to hold."""
        with self._lock:
            hold = (
                self.hold_after is not None
                and not self.held.is_set()
                and len(self._ids) >= self.hold_after
            )
            self._ids.extend(ids)
            self.requests += 1
            if hold:
                self.held_ids = list(ids)
                self.held.set()
            return hold

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                documents = json.loads(body)
                ids = [e["eventId"] for doc in documents for e in doc["body"]["eventList"]]
                if receiver._received(ids):
                    # The sender is killed while it waits for this answer.
                    receiver._release.wait(30)
                elif receiver.delay:
                    time.sleep(receiver.delay)  # a slow receiver, not a test wait
                payload = b'{"ok": true}' if receiver.status < 300 else b"down for maintenance"
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True  # the sender is gone

        return Handler


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """``p13n consume`` processes started by a test; any still running are killed after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def start_consume(
    service: Service, log_path: Path, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    assert service.config_path is not None
    args = [P13N, "consume", "--config", str(service.config_path)]
    args += ["--data-dir", str(service.data_dir)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=service.env)
    started.append(process)
    return process


# -- 1. Personalize throttling and failing ----------------------------------------------------


SESSIONS = 20
EVENTS_PER_SESSION = 25


def test_personalize_under_faults_gets_every_event_in_session_order(
    service_factory: Callable[..., Service], fake_personalize: FakePersonalize
) -> None:
    fake = fake_personalize
    service = service_factory(
        embedded_config(
            {
                "type": "personalize-event-tracker",
                "name": "personalize",
                "trackingId": fake.tracking_id,
                "endpointUrl": fake.endpoint,
                "region": "us-east-1",
                "maxAttempts": 50,  # faults are random: nothing dead-lettered by bad luck
            }
        )
    )
    fake.set_faults(throttle=0.3, server_error=0.05)
    sent = {f"s{s}": [f"{s}-{i}" for i in range(EVENTS_PER_SESSION)] for s in range(SESSIONS)}

    def session(session_id: str) -> None:
        with service.client() as http:
            for event_id in sent[session_id]:  # one after another: each waits for its 202
                post(http, session_id, event_id)

    with ThreadPoolExecutor(SESSIONS) as pool:
        for future in [pool.submit(session, s) for s in sent]:
            future.result()

    every_id = {event_id for ids in sent.values() for event_id in ids}
    wait_until(lambda: every_id <= set(fake.event_ids()), timeout=45, interval=0.1)

    for session_id, ids in sent.items():
        first_arrivals = list(dict.fromkeys(fake.event_ids(session_id=session_id)))
        assert first_arrivals == ids, f"session {session_id} reordered"
    calls = fake.calls()
    errors = Counter(call.error for call in calls)
    # The faults did happen, and were retried through.
    assert errors["ThrottlingException"] > 0 and errors["InternalFailure"] > 0, errors
    assert dead_letters(service) == []
    group = f"{NS}/personalize"

    def settled() -> str | None:
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
        done = metric(text, "p13n_consumer_delivered_total", group=group) >= len(every_id)
        return text if done else None

    text = wait_until(settled, timeout=10)
    assert metric(text, "p13n_consumer_delivered_total", group=group) == len(every_id)
    assert metric(text, "p13n_consumer_dead_letters_total", group=group) == 0
    assert metric(text, "p13n_consumer_retries_total", group=group) > 0
    print(
        f"\npersonalize: {len(calls)} PutEvents calls, {errors['ThrottlingException']} throttled, "
        f"{errors['InternalFailure']} failed, "
        f"{len(fake.event_ids()) - len(every_id)} duplicate event(s), 0 dead letters"
    )


# -- 2. kill -9 of the consumer process, then a restart ---------------------------------------


TOTAL_EVENTS = 3000
HTTP_BATCH = 100


def test_kill_9_of_consume_loses_nothing_and_repeats_only_the_batch_in_flight(
    service_factory: Callable[..., Service],
    receiver_factory: Callable[..., Receiver],
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    receiver = receiver_factory(delay=0.02, hold_after=TOTAL_EVENTS // 3)
    service = service_factory(
        embedded_config(
            {"type": "http", "name": "hook", "url": receiver.url, "batchSize": HTTP_BATCH}
        ),
        extra_args=("--no-consumers",),
    )
    sessions = [f"k{n}" for n in range(60)]

    def sender(number: int) -> list[str]:
        ids = []
        with service.client() as http:
            for n in range(number, TOTAL_EVENTS, 12):
                event_id = f"e{n}"
                post(http, sessions[n % len(sessions)], event_id)
                ids.append(event_id)
        return ids

    with ThreadPoolExecutor(12) as pool:
        posted = {i for ids in pool.map(sender, range(12)) for i in ids}
    assert len(posted) == TOTAL_EVENTS

    first = start_consume(service, tmp_path / "consume-1.log", processes)
    # The receiver holds one request once a third of the events came: a batch in flight.
    wait_until(receiver.held.is_set, timeout=30)
    assert 0 < receiver.count() < TOTAL_EVENTS
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    receiver.release()
    seen_before_restart = receiver.count()

    second = start_consume(service, tmp_path / "consume-2.log", processes)
    wait_until(lambda: posted <= set(receiver.ids()), timeout=40, interval=0.1)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0, (tmp_path / "consume-2.log").read_text()[-3000:]

    received = receiver.ids()
    counts = Counter(received)
    assert set(counts) == posted  # nothing lost, nothing invented
    duplicates = {event_id for event_id, n in counts.items() if n > 1}
    assert max(counts.values()) <= 2
    # Only what was past the last checkpoint comes again: exactly the batch in flight.
    assert 0 < len(duplicates) <= HTTP_BATCH
    assert duplicates == set(receiver.held_ids)

    # ... and it is one contiguous run of one shard, starting right after a checkpoint.
    where = {
        line["record"]["eventList"][0]["eventId"]: (line["shardId"], int(line["sequenceNumber"]))
        for line in service.tail()
    }
    shards = {where[event_id][0] for event_id in duplicates}
    assert len(shards) == 1
    (shard,) = shards
    shard_order = sorted(seq for sid, seq in where.values() if sid == shard)
    run = sorted(where[event_id][1] for event_id in duplicates)
    start = shard_order.index(run[0])
    assert shard_order[start : start + len(run)] == run
    print(
        f"\nkill -9: {seen_before_restart} event ids seen before the kill, "
        f"{len(received)} deliveries of {TOTAL_EVENTS} events, {len(duplicates)} duplicated "
        f"(one contiguous run of {shard}), second consume exited 0 on SIGTERM"
    )


# -- 3. A target that fails forever lags alone -------------------------------------------------


STEADY_EVENTS = 600
SENDERS = 4
RATE_PER_SENDER = 50.0  # events/s: 600 events in about 3 s


def test_a_broken_target_dead_letters_while_the_healthy_one_keeps_up(
    service_factory: Callable[..., Service], receiver_factory: Callable[..., Receiver]
) -> None:
    broken = receiver_factory(status=503)
    service = service_factory(
        embedded_config(
            {
                "type": "http",
                "name": "broken",
                "url": broken.url,
                "maxAttempts": 2,
                "batchSize": 50,
            },
            # Small batches, so a healthy group that fell behind would read full batches and
            # report how far behind it is (a batch short of full means "at the tip").
            {"type": "interactions", "name": "healthy", "batchSize": 20},
        )
    )
    healthy, failing = f"{NS}/healthy", f"{NS}/broken"
    accepted: list[float] = []  # monotonic times of the 202s
    lock = threading.Lock()
    traffic_done = threading.Event()

    def sender(number: int) -> None:
        start = time.monotonic()
        with service.client() as http:
            for n in range(STEADY_EVENTS // SENDERS):
                # Pacing: the n-th event of this sender goes out at start + n / rate.
                traffic_done.wait(max(0.0, start + n / RATE_PER_SENDER - time.monotonic()))
                post(http, f"steady-{number}-{n % 8}", f"steady-{number}-{n}")
                with lock:
                    accepted.append(time.monotonic())

    scrapes: list[dict[str, float]] = []
    with service.client() as http, ThreadPoolExecutor(SENDERS) as pool:
        futures = [pool.submit(sender, n) for n in range(SENDERS)]
        while not all(f.done() for f in futures):
            text = http.get("/metrics").text
            at = time.monotonic()
            with lock:
                posted_by_then = len(accepted)
                posted_a_second_before = sum(1 for t in accepted if t <= at - 1.0)
            scrapes.append(
                {
                    "at": at,
                    "posted": posted_by_then,
                    "posted_1s_before": posted_a_second_before,
                    "lag": max_metric(text, "p13n_consumer_millis_behind_latest", group=healthy),
                    "delivered": metric(text, "p13n_consumer_delivered_total", group=healthy),
                    "dead": metric(text, "p13n_consumer_dead_letters_total", group=failing),
                }
            )
            traffic_done.wait(0.2)
        traffic_done.set()
        for future in futures:
            future.result()

    def final() -> dict[str, float] | None:
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
        now = {
            "delivered": metric(text, "p13n_consumer_delivered_total", group=healthy),
            "dead": metric(text, "p13n_consumer_dead_letters_total", group=failing),
            "healthy_dead": metric(text, "p13n_consumer_dead_letters_total", group=healthy),
        }
        done = now["delivered"] >= STEADY_EVENTS and now["dead"] >= STEADY_EVENTS
        return now if done else None

    end = wait_until(final, timeout=30, interval=0.1)

    assert len(scrapes) >= 10, scrapes
    lags = [s["lag"] for s in scrapes]
    assert max(lags) < 1000, lags
    # The gauge reads only what a poll saw; the counts say the same: at every scrape the
    # healthy group had delivered everything accepted a second before.
    for scrape in scrapes:
        assert scrape["delivered"] >= scrape["posted_1s_before"], scrape
    dead = [s["dead"] for s in scrapes]
    assert all(a <= b for a, b in itertools.pairwise(dead)), dead
    assert len(set(dead)) >= 3, dead  # it kept growing while traffic flowed
    assert end["delivered"] == STEADY_EVENTS
    assert end["dead"] == STEADY_EVENTS
    assert end["healthy_dead"] == 0

    letters = dead_letters(service, "broken")
    assert len(letters) == STEADY_EVENTS
    assert {letter["group"] for letter in letters} == {failing}
    assert {letter["code"] for letter in letters} == {"HTTP503"}
    assert {letter["error_type"] for letter in letters} == {"retryable:Unavailable"}
    assert {letter["attempts"] for letter in letters} == {2}
    assert all("HTTP 503" in letter["message"] for letter in letters)
    assert dead_letters(service, "healthy") == []
    print(
        f"\nbroken vs healthy: {len(scrapes)} scrapes, max healthy lag {max(lags):.0f} ms, "
        f"healthy delivered {end['delivered']:.0f}, broken dead letters {len(letters)} "
        f"(attempts 2, code HTTP503), {broken.requests} requests to the broken receiver"
    )
