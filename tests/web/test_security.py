"""Security properties of the running service: API keys on every route but health and docs, keys
never logged, per-key rate limits, size limits on headers and bodies, capped auto-context
header values, and no internals in any error body whatever the input (hypothesis)."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.service import Service

ServiceFactory = Callable[..., Service]

KEY = "k-3f9a-secret-value"
SLOW_KEY = "k-slow-other-secret"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def keyed_config(**auth: Any) -> dict[str, Any]:
    from schemas.config import default_document

    document = default_document()
    document["auth"] = {
        "apiKeys": [
            {"id": "web", "sha256": sha(KEY)},
            {
                "id": "batch",
                "sha256": sha(SLOW_KEY),
                "rateLimit": {"requestsPerSecond": 0.5, "burst": 3},
            },
        ],
        **auth,
    }
    return document


EVENT = {"sessionId": "s1", "userId": "u1", "eventList": [{"eventType": "View", "itemId": "i1"}]}
PROTECTED = [
    ("POST", "/events/demo"),
    ("GET", "/recommend-items/demo/for-you/u1"),
    ("GET", "/related-items/demo/similar/i1"),
    ("GET", "/rerank-items/demo/ranking/u1/a,b"),
    ("POST", "/rerank-items/demo/ranking/u1"),
    ("GET", "/metrics"),
]


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    body = EVENT if path.startswith("/events") else ["a", "b"]
    if method == "POST":
        return client.post(path, json=body, **kwargs)
    return client.get(path, **kwargs)


def test_api_keys_on_every_route_but_health_and_docs_and_never_logged(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(keyed_config(), extra_args=("--no-consumers",))
    with service.client() as client:
        for method, path in PROTECTED:
            missing = call(client, method, path)
            assert missing.status_code == 401, (path, missing.text)
            assert missing.json()["code"] == "MissingApiKey"
            wrong = call(client, method, path, headers={"x-api-key": KEY + "x"})
            assert wrong.status_code == 403 and wrong.json()["code"] == "InvalidApiKey"
            good = call(client, method, path, headers={"x-api-key": KEY})
            assert good.status_code in (200, 202), (path, good.text)
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path
    service.stop()
    log = service.log_path.read_text()
    assert "access" in log  # there are request lines…
    assert KEY not in log and sha(KEY) not in log  # …and no key, nor its digest, in them


def test_rate_limit_per_key_answers_429_with_retry_after(service_factory: ServiceFactory) -> None:
    service = service_factory(keyed_config(), extra_args=("--no-consumers",))
    with service.client() as client:
        slow = {"x-api-key": SLOW_KEY}
        statuses = [
            client.post("/events/demo", json=EVENT, headers=slow).status_code for _ in range(4)
        ]
        assert statuses == [202, 202, 202, 429]
        limited = client.get("/recommend-items/demo/for-you/u1", headers=slow)
        assert limited.status_code == 429 and limited.json()["code"] == "TooManyRequests"
        assert int(limited.headers["retry-after"]) >= 1
        # Another key has its own bucket (and this one has no limit at all).
        fast = {"x-api-key": KEY}
        assert all(
            client.post("/events/demo", json=EVENT, headers=fast).status_code == 202
            for _ in range(20)
        )
        metrics = client.get("/metrics", headers=fast).text
        assert 'p13n_http_rejections_total{code="TooManyRequests"} 2.0' in metrics
    # Refused requests wrote nothing: 3 + 20 records.
    assert len(service.tail()) == 23


def test_a_rate_limit_needs_api_keys(tmp_path: Any) -> None:
    from schemas.config import default_document, validate_document

    document = default_document()
    document["auth"] = {"rateLimit": {"requestsPerSecond": 5}}
    assert validate_document(document) == [
        ("$.auth.rateLimit", "a rate limit is per API key: set auth.apiKeys")
    ]


def test_headers_and_bodies_are_size_limited(service_factory: ServiceFactory) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    with service.client() as client:
        big = client.get("/recommend-items/demo/for-you/u1", headers={"x-big": "a" * 20_000})
        assert big.status_code == 431 and big.json()["code"] == "HeadersTooLarge"
        many = {f"x-h{n}": "v" for n in range(120)}
        assert client.get("/healthz", headers=many).status_code == 431
        huge = {"sessionId": "s", "eventList": [{"eventType": "V", "properties": "x" * 300_000}]}
        assert client.post("/events/demo", json=huge).status_code == 413
        ids = json.dumps(["i" * 200] * 2000)
        rerank = client.post(
            "/rerank-items/demo/ranking/u1",
            content=ids,
            headers={"content-type": "application/json"},
        )
        assert rerank.status_code == 413
    assert service.tail() == []


def test_auto_context_and_request_context_values_are_capped(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    headers = {
        "user-agent": "U" * 5000,
        "cloudfront-viewer-country": "C" * 5000,
        "cloudfront-is-mobile-viewer": "true" + "x" * 5000,
    }
    with service.client() as client:
        assert client.post("/events/demo", json=EVENT, headers=headers).status_code == 202
    (line,) = service.tail()
    record = line["record"]
    stored = json.dumps(record)
    assert "U" * 513 not in stored and "C" * 513 not in stored
    properties = json.loads(record["eventList"][0]["properties"])
    assert properties["deviceType"] == "Desktop"  # the over-long value matched no rule


ROUTES = [
    ("POST", "/events/{a}"),
    ("GET", "/recommend-items/{a}/{b}/{c}"),
    ("GET", "/related-items/{a}/{b}/{c}"),
    ("GET", "/rerank-items/{a}/{b}/{c}/{d}"),
    ("POST", "/rerank-items/{a}/{b}/{c}"),
]
SEGMENT = st.one_of(
    st.sampled_from(["demo", "for-you", "similar", "ranking", "u1", "i1", "a,b"]),
    st.text(string.ascii_letters + string.digits + "-_.~%,", min_size=1, max_size=300),
)
PARAMS = st.dictionaries(
    st.sampled_from(
        ["numResults", "filter", "filterValues", "context", "decorateItems", "feature", "userId"]
    ),
    st.one_of(st.text(max_size=40), st.sampled_from(["{", "[]", "0", "501", '{"a":{}}', "1e9"])),
    max_size=4,
)
BODY = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=10,
    ).map(lambda value: json.dumps(value).encode()),
)
CONTENT_TYPE = st.sampled_from(["application/json", "text/plain", "", "application/x+json"])
INTERNALS = ("Traceback", 'File "', "site-packages", ".py", "sqlite3", "botocore", "p13n.")


def test_no_bad_input_gets_a_5xx_or_internals(service_factory: ServiceFactory) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    client = service.client()

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        route=st.sampled_from(ROUTES),
        segments=st.lists(SEGMENT, min_size=4, max_size=4),
        params=PARAMS,
        body=BODY,
        content_type=CONTENT_TYPE,
    )
    def check(
        route: tuple[str, str],
        segments: list[str],
        params: dict[str, str],
        body: bytes,
        content_type: str,
    ) -> None:
        method, template = route
        path = template.format(a=segments[0], b=segments[1], c=segments[2], d=segments[3])
        headers = {"content-type": content_type} if content_type else {}
        reply = client.request(
            method,
            path,
            params=params,
            content=body if method == "POST" else None,
            headers=headers,
        )
        assert reply.status_code < 500, (method, path, params, reply.text)
        if reply.status_code >= 400:
            document = reply.json()
            assert set(document) == {"type", "code", "message"}, document
            # Messages may quote what the caller sent; anything else from this list is internal.
            sent = path + json.dumps(params) + body.decode("latin-1")
            leaked = [w for w in INTERNALS if w in document["message"] and w not in sent]
            assert not leaked, document

    try:
        check()
    finally:
        client.close()
