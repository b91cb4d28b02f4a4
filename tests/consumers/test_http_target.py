"""The http target against a local receiver over real sockets.

The receiver (``http.server`` in a thread) records every request's headers and body and answers
what the test queues: 200 by default, or any status with headers and a body, or a delay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from consumers.base import Deferred
from consumers.targets import build_target
from consumers.targets import http as http_target
from consumers.targets.http import HttpTarget
from consumers.targets.jsonshape import sample_json
from schemas.errors import (
    InvalidRequest,
    NotFound,
    PermanentError,
    RetryableError,
    Throttled,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from tests.consumers.json_target_records import (
    BASE_MS,
    CONTEXT,
    deliveries,
    event,
    record,
    records_of,
    target_config,
)
from tests.fixtures.servers import free_port


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def documents(self) -> list[dict[str, Any]]:
        documents: list[dict[str, Any]] = json.loads(self.body)
        return documents

    @property
    def event_ids(self) -> list[str]:
        return [d["body"]["eventList"][0]["eventId"] for d in self.documents]


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    delay: float = 0.0


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._answers: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/events"

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests with these, in turn; 200 once they are used up."""
        with self._lock:
            self._answers.extend(answers)

    def take(self, request: Request) -> Answer:
        with self._lock:
            self.requests.append(request)
            return self._answers.popleft() if self._answers else Answer()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = receiver.take(Request(self.path, headers, body))
            if answer.delay:
                time.sleep(answer.delay)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except OSError:
                pass  # the client gave up (a timeout test)

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def make_target(receiver: Receiver) -> Iterator[Callable[..., HttpTarget]]:
    opened: list[HttpTarget] = []

    def make(**options: Any) -> HttpTarget:
        options.setdefault("url", receiver.url)
        target = build_target(target_config("http", **options), CONTEXT)
        assert isinstance(target, HttpTarget)
        target.open()
        opened.append(target)
        return target

    yield make
    for target in opened:
        target.close()


# -- what is sent -------------------------------------------------------------------------------


def test_a_record_is_sent_in_the_sample_json_shape(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    fields = record(
        "s1",
        event(None, itemId="i1", eventValue=4.99, properties='{"color":"red"}', sentAt=BASE_MS + 5),
        event("e2", eventType="Purchase", impression=["i1", "i2"], recommendationId="r1"),
        userId="u1",
        experimentConversions=[
            {"recommender": "rec", "feature": "f", "metric": "m", "value": 2.5},
            {"recommender": "rec", "feature": "f", "metric": "n", "value": None},
        ],
        context={"ua": "Mozilla/5.0", "cc": "DE", "zz": "kept"},
    )
    target = make_target()

    failures = target.deliver(deliveries([fields]))

    assert failures == {}
    [request] = receiver.requests
    assert request.path == "/hooks/events"
    assert request.documents == [
        {
            "namespace": "shop",
            "path": "/events/shop",
            "headers": {
                "user-agent": "Mozilla/5.0",
                "cloudfront-viewer-country": "DE",
                "zz": "kept",
            },
            "queryStringParameters": {},
            "body": {
                "sessionId": "s1",
                "userId": "u1",
                "eventList": [
                    {
                        "eventId": f"{fields['recordId'].hex()}-0",
                        "eventType": "View",
                        "sentAt": 1_700_000_000.005,
                        "eventValue": 4.99,
                        "itemId": "i1",
                        "properties": '{"color":"red"}',
                    },
                    {
                        "eventId": "e2",
                        "eventType": "Purchase",
                        "sentAt": 1_700_000_000.0,
                        "recommendationId": "r1",
                        "impression": ["i1", "i2"],
                    },
                ],
                "experimentConversions": [
                    {"recommender": "rec", "feature": "f", "metric": "m", "value": 2.5},
                    {"recommender": "rec", "feature": "f", "metric": "n"},
                ],
            },
            "recordId": fields["recordId"].hex(),
        }
    ]


def test_records_are_posted_in_order_in_chunks_of_batch_size_with_the_configured_headers(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    records = records_of([f"s{n % 7}" for n in range(250)])
    batch = deliveries(records)
    target = make_target(batch_size=100, headers={"Authorization": "Bearer t0k", "X-Team": "a"})

    failures = target.deliver(batch)

    assert failures == {}
    assert [len(r.documents) for r in receiver.requests] == [100, 100, 50]
    sent = [d for r in receiver.requests for d in r.documents]
    assert sent == [sample_json(d.fields) for d in batch]
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["authorization"] == "Bearer t0k"
        assert request.headers["x-team"] == "a"
        assert "x-p13n-signature" not in request.headers
        assert "x-p13n-replay" not in request.headers


def test_the_default_chunk_is_a_hundred_records(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    target = make_target()

    assert target.deliver(deliveries(records_of([f"s{n}" for n in range(230)]))) == {}

    assert [len(r.documents) for r in receiver.requests] == [100, 100, 30]


def test_the_signature_is_an_hmac_of_the_exact_body(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    secret = "s3cr3t-ключ"
    target = make_target(secret=secret, batch_size=3)

    assert target.deliver(deliveries(records_of(["a", "b", "a", "c", "d"]))) == {}

    assert len(receiver.requests) == 2
    for request in receiver.requests:
        expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
        header = request.headers["x-p13n-signature"]
        assert header.startswith("sha256=")
        assert hmac.compare_digest(header.removeprefix("sha256="), expected)
        wrong = hmac.new(b"other", request.body, hashlib.sha256).hexdigest()
        assert not hmac.compare_digest(header.removeprefix("sha256="), wrong)


def test_replays_are_marked_in_a_header_and_in_every_document(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    live = deliveries(records_of(["a", "b"]))
    replayed = deliveries(records_of(["c", "d"]), replay=True)
    target = make_target(secret="k")

    failures = target.deliver([live[0], *replayed, live[1]])

    # THEN a chunk never mixes live and replayed records
    assert failures == {}
    assert [r.event_ids for r in receiver.requests] == [["a-0"], ["c-0", "d-0"], ["b-0"]]
    assert [r.headers.get("x-p13n-replay") for r in receiver.requests] == [None, "1", None]
    assert [[d.get("replay") for d in r.documents] for r in receiver.requests] == [
        [None],
        [True, True],
        [None],
    ]


# -- outcomes -----------------------------------------------------------------------------------


def test_429_is_retryable_with_retry_after_and_ends_the_batch(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    receiver.answer(Answer(200), Answer(429, (("Retry-After", "7"),), b"slow down"))
    target = make_target(batch_size=2)

    failures = target.deliver(deliveries(records_of(["a", "b", "c", "d", "e", "f"])))

    # THEN the first chunk is delivered, the throttled chunk retried after 7 s, and the rest
    # is not sent (deferred: no attempt is counted for it)
    assert len(receiver.requests) == 2
    assert sorted(failures) == [2, 3, 4, 5]
    for index in (2, 3):
        assert isinstance(failures[index], Throttled)
        assert failures[index].retry_after == 7.0
        assert "429" in failures[index].message
    assert all(isinstance(failures[i], Deferred) for i in (4, 5))


def test_retry_after_as_an_http_date(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    receiver.answer(Answer(503, (("Retry-After", when),)))
    target = make_target()

    failures = target.deliver(deliveries(records_of(["a"])))

    assert isinstance(failures[0], Unavailable)
    assert failures[0].retry_after is not None
    assert 28 <= failures[0].retry_after <= 31


@pytest.mark.parametrize("status", [500, 502, 504])
def test_5xx_is_retryable(
    status: int, receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    receiver.answer(Answer(status, body=b"boom"))
    target = make_target()

    failures = target.deliver(deliveries(records_of(["a", "a", "b"])))

    assert set(failures) == {0, 1, 2}
    assert all(isinstance(f, UpstreamError) for f in failures.values())
    assert failures[0].retry_after is None
    assert f"HTTP {status}" in failures[0].message


def test_4xx_is_permanent_for_its_chunk_only(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    receiver.answer(Answer(400, body=b'{"error": "eventType missing"}' + b"x" * 1000))
    target = make_target(batch_size=2)

    failures = target.deliver(deliveries(records_of(["a", "b", "a", "c"])))

    # THEN the refused chunk is dead-lettered with the status and the start of the body, and
    # the next chunk is still sent: a permanent failure never holds its key's successors
    assert len(receiver.requests) == 2
    assert set(failures) == {0, 1}
    error = failures[0]
    assert isinstance(error, InvalidRequest)
    assert isinstance(error, PermanentError)
    assert "HTTP 400" in error.message
    assert "eventType missing" in error.message
    assert len(error.message) < 400


def test_404_is_permanent_and_about_the_destination(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    receiver.answer(Answer(404, body=b"no such hook"))
    target = make_target(batch_size=1)

    failures = target.deliver(deliveries(records_of(["a", "b", "c"])))

    # THEN a missing endpoint fails the whole batch without more requests
    assert len(receiver.requests) == 1
    assert set(failures) == {0, 1, 2}
    assert all(isinstance(f, NotFound) for f in failures.values())


def test_a_retryable_chunk_defers_later_records_of_its_keys(
    receiver: Receiver, make_target: Callable[..., HttpTarget]
) -> None:
    receiver.answer(Answer(200), Answer(500))
    target = make_target(batch_size=2)
    sessions = ["a", "b", "c", "a", "b", "d"]

    failures = target.deliver(deliveries(records_of(sessions)))

    assert [r.event_ids for r in receiver.requests] == [["a-0", "b-0"], ["c-0", "a-1"]]
    assert isinstance(failures[2], UpstreamError)
    assert isinstance(failures[3], UpstreamError)
    assert isinstance(failures[4], Deferred)
    assert isinstance(failures[5], Deferred)
    assert set(failures) == {2, 3, 4, 5}


def test_a_read_timeout_is_retryable(
    receiver: Receiver, make_target: Callable[..., HttpTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_target, "TIMEOUT", httpx.Timeout(0.3, connect=0.3))
    receiver.answer(Answer(200, delay=1.0))
    target = make_target()

    failures = target.deliver(deliveries(records_of(["a", "b"])))

    assert set(failures) == {0, 1}
    assert all(isinstance(f, UpstreamTimeout) for f in failures.values())


def test_an_unreachable_receiver_is_retryable(make_target: Callable[..., HttpTarget]) -> None:
    target = make_target(url=f"http://127.0.0.1:{free_port()}/hook", batch_size=1)

    failures = target.deliver(deliveries(records_of(["a", "b"])))

    assert isinstance(failures[0], Unavailable)
    assert isinstance(failures[1], Deferred)
    assert all(isinstance(f, RetryableError) for f in failures.values())


def test_deliver_before_open_is_retryable(receiver: Receiver) -> None:
    target = build_target(target_config("http", url=receiver.url), CONTEXT)

    with pytest.raises(Unavailable):
        target.deliver(deliveries(records_of(["a"])))
