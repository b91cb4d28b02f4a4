"""The HTTP resolver against a real local HTTP server, and its URL template under hypothesis:
whatever the caller sends, it fills one path segment or one query value, never the host."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query.resolvers.http import MAX_BODY_BYTES, UrlTemplate
from schemas.errors import (
    ConfigError,
    InvalidRequest,
    Throttled,
    UpstreamError,
    UpstreamTimeout,
)
from tests.fixtures.servers import free_port
from tests.query.resolver_support import failure, make_resolver, query, resolve

FOR_YOU = "recommend-items"
RERANK = "rerank-items"
OK_BODY = {"itemList": [{"itemId": "a", "score": 0.9}, {"itemId": "b"}], "recommendationId": "x1"}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class Answer:
    status: int = 200
    body: bytes = json.dumps(OK_BODY).encode()
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # answer only once set


class RecService:
    """A recommendation service that records each request's raw path and headers."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answer = Answer()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                service.seen.append(
                    Seen(self.path, {k.lower(): v for k, v in self.headers.items()})
                )
                answer = service.answer
                if answer.hold is not None:
                    answer.hold.wait(10)
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.body)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the client gave up

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.answer.hold is not None:
            self.answer.hold.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def service() -> Iterator[RecService]:
    running = RecService()
    try:
        yield running
    finally:
        running.close()


def variation(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, **extra}


def test_values_are_encoded_into_the_template(service: RecService) -> None:
    url = service.base + "/v1/{namespace}/users/{userId}/recs?n={numResults}&r={recommender}"
    resolver = make_resolver(FOR_YOU, variation(url, headers={"x-api-key": "k1"}))
    [answer] = resolve(resolver, query(FOR_YOU, user_id="ann marie/2", num_results=800))
    [seen] = service.seen
    assert seen.path == "/v1/shop/users/ann%20marie%2F2/recs?n=500&r=picks"
    assert seen.headers["x-api-key"] == "k1"
    assert seen.headers["accept"] == "application/json"
    assert answer.body("itemList") == OK_BODY


def test_rerank_passes_item_ids_as_one_value(service: RecService) -> None:
    url = service.base + "/rank?user={userId}&items={itemIds}"
    resolver = make_resolver(RERANK, variation(url))
    service.answer = Answer(body=json.dumps({"personalizedRanking": [{"itemId": "b"}]}).encode())
    [answer] = resolve(resolver, query(RERANK, user_id="u", item_ids=("a", "b&c=d")))
    query_string = urlsplit(service.seen[0].path).query
    assert parse_qsl(query_string) == [("user", "u"), ("items", "a,b&c=d")]
    assert [i["itemId"] for i in answer.items] == ["b"]


NASTY = ["../admin?x=1#", "@evil.com", "a/b/../../c", "%2e%2e", "x?y=1&z=2", "http://evil.com/"]


@pytest.mark.parametrize("value", NASTY)
def test_a_nasty_value_stays_one_segment_at_the_real_server(
    service: RecService, value: str
) -> None:
    url = service.base + "/users/{userId}/recs?item={itemId}"
    resolver = make_resolver(FOR_YOU, variation(url))
    resolve(resolver, query(FOR_YOU, user_id=value, item_id=value))
    [seen] = service.seen  # it reached this server, on this port
    parts = urlsplit(seen.path)
    segments = parts.path.split("/")
    assert segments[:2] == ["", "users"] and segments[3:] == ["recs"]
    assert unquote(segments[2]) == value
    assert parse_qsl(parts.query) == [("item", value)]
    assert seen.headers["host"] == f"127.0.0.1:{service.port}"


@pytest.mark.parametrize("value", [".", ".."])
def test_dot_segments_are_refused(service: RecService, value: str) -> None:
    resolver = make_resolver(FOR_YOU, variation(service.base + "/users/{userId}/recs"))
    error = failure(resolver, query(FOR_YOU, user_id=value))
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert service.seen == []


TEMPLATE = "https://recs.example.com:8443/v2/{namespace}/{userId}/similar/{itemId}?n={numResults}&f={filter}#top"
values = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40).filter(
    lambda v: v not in (".", "..")
)


@settings(max_examples=300, deadline=None)
@given(user=values, item=values, filter_name=values, namespace=values)
def test_the_url_keeps_its_host_port_and_structure(
    user: str, item: str, filter_name: str, namespace: str
) -> None:
    rendered = UrlTemplate(TEMPLATE).render(
        {
            "userId": user,
            "itemId": item,
            "filter": filter_name,
            "namespace": namespace,
            "numResults": "25",
        }
    )
    url = httpx.URL(rendered)  # what the client connects to
    assert (url.scheme, url.host, url.port) == ("https", "recs.example.com", 8443)
    assert url.fragment == "top"
    segments = urlsplit(rendered).path.split("/")
    assert len(segments) == 6 and segments[1] == "v2" and segments[4] == "similar"
    assert [unquote(s) for s in (segments[2], segments[3], segments[5])] == [namespace, user, item]
    assert parse_qsl(urlsplit(rendered).query, keep_blank_values=True) == [
        ("n", "25"),
        ("f", filter_name),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://{namespace}.example.com/recs",
        "http://example.com:{numResults}/recs",
        "http://user:{userId}@example.com/recs",
        "http://example.com/recs/{password}",
        "http://example.com/recs/{userId!r}",
        "http://example.com/recs/{userId:>10}",
        "http://example.com/recs/{userId.__class__}",
        "http://example.com/recs/{userId",
    ],
)
def test_templates_that_could_be_abused_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        make_resolver(FOR_YOU, variation(url))


def failed(service: RecService, answer: Answer, **extra: Any) -> Exception:
    service.answer = answer
    resolver = make_resolver(FOR_YOU, variation(service.base + "/recs/{userId}", **extra))
    return failure(resolver, query(FOR_YOU, user_id="u1"))


def test_429_is_throttled_with_retry_after(service: RecService) -> None:
    error = failed(service, Answer(429, b"slow down", {"Retry-After": "12"}))
    assert isinstance(error, Throttled) and error.status == 429
    assert error.retry_after == 12.0


@pytest.mark.parametrize("status", [500, 503, 404, 400, 302])
def test_other_statuses_are_502(service: RecService, status: int) -> None:
    error = failed(service, Answer(status, b"{}", {"Location": "http://evil.com/"}))
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == f"HTTP{status}"
    assert len(service.seen) == 1  # no redirect followed, no retry


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"personalizedRanking": []}',
        b'{"itemList": [{"item": "a"}]}',
        b"[]",
        b'{"itemList": [' + b'{"itemId": "a"},' * (MAX_BODY_BYTES // 16) + b'{"itemId": "z"}]}',
    ],
)
def test_answers_of_the_wrong_shape_are_502(service: RecService, body: bytes) -> None:
    error = failed(service, Answer(200, body))
    assert type(error) is UpstreamError and error.code == "BadResponse"


def test_slow_service_is_504(service: RecService) -> None:
    error = failed(service, Answer(hold=threading.Event()), timeoutMs=100)
    assert isinstance(error, UpstreamTimeout) and error.status == 504


def test_unreachable_service_is_502() -> None:
    resolver = make_resolver(FOR_YOU, variation(f"http://127.0.0.1:{free_port()}/recs"))
    error = failure(resolver, query(FOR_YOU))
    assert type(error) is UpstreamError and error.code == "Unreachable"


def test_one_client_serves_concurrent_calls_and_closes(service: RecService) -> None:
    # A generous timeout: eight connections at once can outrun the test server's accept
    # backlog of five on a loaded machine, and a dropped SYN is retried only after a second.
    resolver = make_resolver(FOR_YOU, variation(service.base + "/recs/{userId}", timeoutMs=5000))

    async def run() -> list[Any]:
        try:
            return list(
                await asyncio.gather(
                    *(resolver.resolve(query(FOR_YOU, user_id=f"u{n}")) for n in range(8))
                )
            )
        finally:
            await resolver.close()

    answers = asyncio.run(run())
    assert len(answers) == 8 and all(a.recommendation_id == "x1" for a in answers)
    assert sorted(s.path for s in service.seen) == sorted(f"/recs/u{n}" for n in range(8))
    assert resolver.closed  # type: ignore[attr-defined]
