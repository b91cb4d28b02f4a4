"""Archive replay freshness: the moment the archive target has acknowledged a record (and so
checkpointed it), ``p13n replay`` of the archive delivers it — before its file has rolled."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.consumers.test_faults_e2e import NS, Receiver, embedded_config, metric
from tests.fixtures.service import Service, wait_until

REQUESTS = 300  # two events each


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def test_replay_right_after_the_last_delivery_gets_every_archived_event(
    service_factory: Callable[..., Service], receiver: Receiver
) -> None:
    config = embedded_config(
        {"type": "http", "name": "hook", "url": receiver.url, "batchSize": 50},
        # Files would roll a minute from now: what replay sees must come from the segments.
        {"type": "archive", "name": "archive", "rollSeconds": 60},
    )
    service = service_factory(config)
    archive_dir = service.data_dir / "archive"

    def send(number: int) -> None:
        with service.client() as http:
            for n in range(REQUESTS // 10):
                response = http.post(
                    f"/events/{NS}",
                    json={
                        "sessionId": f"s-{number}",
                        "eventList": [
                            {"eventType": "View", "itemId": "i", "eventId": f"{number}-{n}-a"},
                            {"eventType": "View", "itemId": "i", "eventId": f"{number}-{n}-b"},
                        ],
                    },
                )
                assert response.status_code == 202, response.text

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(send, range(10)))
    events = 2 * REQUESTS

    def archived() -> bool:
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
        return metric(text, "p13n_consumer_delivered_total", group=f"{NS}/archive") >= REQUESTS

    wait_until(lambda: receiver.count() >= events, 30, "live delivery of every event")
    wait_until(archived, 30, "the archive target to acknowledge every record")
    live = Counter(receiver.ids())
    assert sum(live.values()) >= events

    done = service.cli("replay", "--source", f"file://{archive_dir}", "--target", "hook")
    assert done.returncode == 0, done.stderr
    replayed = Counter(receiver.ids()) - live
    # Every event once: none missing, none duplicated by a segment and its rolled file.
    assert replayed == Counter(
        {f"{c}-{n}-{x}": 1 for c in range(10) for n in range(30) for x in "ab"}
    )
    staged = list((archive_dir / "_staging").rglob("*.avro"))
    assert staged, "the files had not rolled: replay read their segments"
