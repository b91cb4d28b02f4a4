"""CORS and gzip against the service process: preflights, the headers every API answer carries,
what is configurable, and compressed answers (cache hits included) equal to the plain ones."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from schemas.config import default_document
from tests.fixtures.fake_recommender import FakeRecommender
from tests.fixtures.service import Service
from web.compression import accepts_gzip

ServiceFactory = Callable[..., Service]
PAGE = "https://shop.example"
KEY = "key-for-the-web-page"
EVENT = {"sessionId": "s-1", "eventList": [{"eventType": "View", "itemId": "item-1"}]}


def preflight(
    client: httpx.Client, path: str, method: str = "POST", origin: str = PAGE
) -> httpx.Response:
    return client.options(
        path,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "content-type,x-api-key",
        },
    )


def demo(**extra: Any) -> dict[str, Any]:
    """The built-in config (its demo namespace) with ``extra`` top-level keys."""
    config = default_document()
    config.pop("dataDir", None)
    return {**config, **extra}


def keyed() -> dict[str, Any]:
    """The built-in config behind an API key."""
    return demo(
        auth={"apiKeys": [{"id": "web", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
    )


def test_default_cors_is_the_samples(service_factory: ServiceFactory) -> None:
    service = service_factory(keyed(), extra_args=("--no-consumers",))
    with service.client() as client:
        for path, method in [
            ("/events/demo", "POST"),
            ("/recommend-items/demo/for-you/u1", "GET"),
            ("/rerank-items/demo/ranking/u1", "POST"),
            ("/openapi.json", "GET"),
        ]:
            # No API key: browsers send none with a preflight, and it must not need one.
            reply = preflight(client, path, method)
            assert reply.status_code == 204, (path, reply.text)
            assert reply.headers["access-control-allow-origin"] == "*"
            assert reply.headers["access-control-max-age"] == "500"
            assert method in reply.headers["access-control-allow-methods"]
            allowed = {h.strip() for h in reply.headers["access-control-allow-headers"].split(",")}
            assert {"content-type", "x-api-key"} <= allowed
            assert reply.content == b""

        sent = client.post("/events/demo", json=EVENT, headers={"origin": PAGE, "x-api-key": KEY})
        assert sent.status_code == 202, sent.text
        assert sent.headers["access-control-allow-origin"] == "*"
        exposed = sent.headers["access-control-expose-headers"]
        assert "x-personalization-config-version" in exposed and "etag" in exposed
        read = client.get(
            "/recommend-items/demo/for-you/u1", headers={"origin": PAGE, "x-api-key": KEY}
        )
        assert read.status_code == 200 and read.headers["access-control-allow-origin"] == "*"
        # Errors too, so the page can read why: a missing key, a bad parameter.
        for reply, status in [
            (client.get("/recommend-items/demo/for-you/u1", headers={"origin": PAGE}), 401),
            (
                client.get(
                    "/recommend-items/demo/for-you/u1?numResults=0",
                    headers={"origin": PAGE, "x-api-key": KEY},
                ),
                400,
            ),
        ]:
            assert reply.status_code == status, reply.text
            assert reply.headers["access-control-allow-origin"] == "*"
            assert set(reply.json()) == {"type", "code", "message"}
        # Health, readiness and metrics are not for pages.
        for path in ("/healthz", "/readyz", "/metrics"):
            plain = client.get(path, headers={"origin": PAGE})
            assert "access-control-allow-origin" not in plain.headers, path
            refused = preflight(client, path, "GET")  # 405, or 401 first for /metrics
            assert refused.status_code in (401, 405), path
            assert "access-control-allow-origin" not in refused.headers, path
        # Without an Origin nothing changes.
        assert "access-control-allow-origin" not in client.get("/healthz").headers


def test_origins_headers_and_max_age_come_from_the_config(service_factory: ServiceFactory) -> None:
    cors = {
        "allowOrigins": [PAGE, "http://localhost:3000"],
        "allowHeaders": ["Content-Type", "X-Api-Key", "X-Trace"],
        "exposeHeaders": ["ETag"],
        "maxAgeSeconds": 60,
    }
    service = service_factory(demo(cors=cors), extra_args=("--no-consumers",))
    with service.client() as client:
        reply = preflight(client, "/events/demo")
        assert reply.status_code == 204
        assert reply.headers["access-control-allow-origin"] == PAGE
        assert "Origin" in reply.headers.get_list("vary")
        assert reply.headers["access-control-max-age"] == "60"
        assert reply.headers["access-control-allow-headers"] == "content-type, x-api-key, x-trace"

        refused = preflight(client, "/events/demo", origin="https://evil.example")
        assert refused.status_code == 403
        assert set(refused.json()) == {"type", "code", "message"}
        assert refused.json()["code"] == "Forbidden"
        assert "access-control-allow-origin" not in refused.headers

        ok = client.post("/events/demo", json=EVENT, headers={"origin": "http://localhost:3000"})
        assert ok.status_code == 202
        assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert ok.headers["access-control-expose-headers"] == "etag"
        other = client.post("/events/demo", json=EVENT, headers={"origin": "https://evil.example"})
        assert other.status_code == 202  # served; the browser withholds it from the page
        assert "access-control-allow-origin" not in other.headers


def test_cors_can_be_switched_off(service_factory: ServiceFactory) -> None:
    service = service_factory(demo(cors={"enabled": False}), extra_args=("--no-consumers",))
    with service.client() as client:
        assert preflight(client, "/events/demo").status_code == 405
        sent = client.post("/events/demo", json=EVENT, headers={"origin": PAGE})
        assert sent.status_code == 202 and "access-control-allow-origin" not in sent.headers


# -- compression -------------------------------------------------------------------------------


def raw_get(client: httpx.Client, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """The answer and its bytes as they came over the wire (httpx would decompress them)."""
    with client.stream("GET", path, headers=headers) as reply:
        return reply, b"".join(reply.iter_raw())


def http_config(url: str, **extra: Any) -> dict[str, Any]:
    variation = {"type": "http", "url": url + "/recs/{userId}?n={numResults}"}
    return {
        "cacheControl": {"userSpecified": {"maxAge": 300}},
        "namespaces": {
            "shop": {
                "recommenders": {"recommend-items": {"recs": {"variations": {"v": variation}}}}
            }
        },
        **extra,
    }


def test_large_answers_are_gzipped_for_clients_that_accept_it(
    service_factory: ServiceFactory, fake_recommender: FakeRecommender
) -> None:
    service = service_factory(http_config(fake_recommender.url), extra_args=("--no-consumers",))
    path = "/recommend-items/shop/recs/u1?numResults=100"
    with service.client() as client:
        plain, plain_bytes = raw_get(client, path, **{"accept-encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        assert len(plain_bytes) >= 1024
        for outcome in ("hit", "hit"):  # the memo of the cached entry, twice
            packed, packed_bytes = raw_get(client, path, **{"accept-encoding": "gzip, deflate, br"})
            assert packed.headers["x-p13n-cache"] == outcome
            assert packed.headers["content-encoding"] == "gzip"
            assert int(packed.headers["content-length"]) == len(packed_bytes) < len(plain_bytes)
            assert "Accept-Encoding" in packed.headers.get_list("vary")
            assert gzip.decompress(packed_bytes) == plain_bytes
        # A miss (another user), the OpenAPI document, an error: all compressed alike.
        miss, miss_bytes = raw_get(
            client, "/recommend-items/shop/recs/u2?numResults=100", **{"accept-encoding": "gzip"}
        )
        assert miss.headers["x-p13n-cache"] == "miss"
        assert json.loads(gzip.decompress(miss_bytes))["itemList"][99]["itemId"] == "item-100"
        spec, spec_bytes = raw_get(client, "/openapi.json", **{"accept-encoding": "gzip"})
        assert spec.headers["content-encoding"] == "gzip"
        assert json.loads(gzip.decompress(spec_bytes))["openapi"].startswith("3.")
        # Small answers stay as they are.
        small, small_bytes = raw_get(
            client, "/recommend-items/shop/recs/u3?numResults=2", **{"accept-encoding": "gzip"}
        )
        assert "content-encoding" not in small.headers
        assert len(json.loads(small_bytes)["itemList"]) == 2
        # HEAD: the headers of the plain answer, no body to compress.
        head = client.head(path, headers={"accept-encoding": "gzip"})
        assert head.status_code == 200 and "content-encoding" not in head.headers
        assert head.content == b""
        # httpx itself decompresses: what a client sees is the same document.
        assert client.get(path).json() == json.loads(plain_bytes)


def test_compression_threshold_and_switch(
    service_factory: ServiceFactory, fake_recommender: FakeRecommender
) -> None:
    config = http_config(fake_recommender.url, compression={"minimumBytes": 1_000_000})
    service = service_factory(config, extra_args=("--no-consumers",))
    with service.client() as client:
        reply, _ = raw_get(
            client, "/recommend-items/shop/recs/u1?numResults=100", **{"accept-encoding": "gzip"}
        )
        assert reply.status_code == 200 and "content-encoding" not in reply.headers
    off = service_factory(
        http_config(fake_recommender.url, compression={"enabled": False}),
        extra_args=("--no-consumers",),
    )
    with off.client() as client:
        reply, _ = raw_get(
            client, "/recommend-items/shop/recs/u1?numResults=100", **{"accept-encoding": "gzip"}
        )
        assert "content-encoding" not in reply.headers


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (b"gzip", True),
        (b"gzip, deflate, br", True),
        (b"br;q=1.0, GZIP;q=0.5", True),
        (b"*", True),
        (b"gzip;q=0", False),
        (b"gzip;q=0.0, identity", False),
        (b"deflate, br", False),
        (b"identity", False),
        (b"", False),
    ],
)
def test_accept_encoding_values(value: bytes, accepted: bool) -> None:
    assert accepts_gzip(value) is accepted
