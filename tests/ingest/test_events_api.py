"""POST /events end to end: the service as a process, its answers, and what reaches the stream.

Most tests talk to a real ``p13n serve`` (the built-in config, or a config written here) and read
the stream back with ``p13n stream tail``. The property test drives the same app in-process
(``create_app`` + Starlette's TestClient, lifespan included) so it can try many bodies quickly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import struct
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from starlette.exceptions import StarletteDeprecationWarning

from p13n.app import create_app
from schemas.codec import INTERACTION, Codec
from schemas.config import default_document, validate_document
from schemas.records import event_id, with_partition_key
from schemas.sources import BuiltinSource, ConfigHolder
from streams.embedded import EmbeddedReader
from tests.fixtures.service import Service, start_service

with warnings.catch_warnings():
    # Starlette would prefer httpx2; the httpx it falls back to is what the project installs.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

JSON = {"content-type": "application/json"}
ERROR_KEYS = {"type", "code", "message"}
# The sample project's error types, by the status p13n answers.
ERROR_TYPES = {
    400: "Validation",
    401: "Authorization",
    403: "Authorization",
    404: "Configuration",
    405: "Validation",
    413: "Validation",
    415: "Validation",
}
RECORD_ID = re.compile(r"^[0-9a-f]{32}$")


def post(client: httpx.Client, namespace: str, body: Any, **headers: str) -> httpx.Response:
    return client.post(
        f"/events/{namespace}", content=json.dumps(body).encode(), headers={**JSON, **headers}
    )


def by_record_id(service: Service) -> dict[str, dict[str, Any]]:
    return {line["record"]["recordId"]: line for line in service.tail()}


def assert_error(
    response: httpx.Response, status: int, code: str, what: str = ""
) -> dict[str, Any]:
    assert response.status_code == status, (what, response.text)
    assert response.headers["content-type"].startswith("application/json"), what
    body = response.json()
    assert set(body) == ERROR_KEYS, (what, body)
    assert body["code"] == code, (what, body)
    assert body["type"] == ERROR_TYPES[status], (what, body)
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in body["message"]
    return body


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service on the built-in config, shared by the read-only happy-path tests."""
    service = start_service(tmp_path_factory.mktemp("demo"))
    yield service
    service.stop()


# -- the accepted path, on the built-in config ------------------------------------------------


def test_an_accepted_request_is_the_record_in_the_stream(demo: Service) -> None:
    secrets = {
        "x-api-key": "KEY-5e7a1c0d9b",
        "authorization": "Bearer TOKEN-8f2e44aa",
        "cookie": "session=COOKIE-77d1f0",
    }
    body = {
        "sessionId": "sess-roundtrip",
        "userId": "user-1",
        "eventList": [
            {
                "eventId": "given-id",
                "eventType": "Purchase",
                "itemId": "item-1",
                "eventValue": 9.5,
                "impression": ["item-1", "item-2"],
                "recommendationId": "rec-1",
                "sentAt": 1_700_000_000.25,
                "metricAttribution": {"eventAttributionSource": "email"},
            },
            {"eventType": "View", "itemId": "item-2", "properties": {"deviceType": "Mine"}},
            {"eventType": "View", "itemId": "item-3", "properties": '{"color": "red", "n": 2}'},
            {"eventType": "View", "itemId": "item-4", "properties": {"size": "L"}},
        ],
    }
    headers = {
        "user-agent": "TestAgent/1.0",
        "cloudfront-viewer-country": "DE",
        "cloudfront-is-mobile-viewer": "true",
        **secrets,
    }
    with demo.client() as client:
        response = post(client, "demo", body, **headers)
    assert response.status_code == 202, response.text
    assert response.headers["x-personalization-config-version"] == "builtin-1"
    answer = response.json()
    assert set(answer) == {"accepted", "recordId"}
    assert answer["accepted"] == 4
    assert RECORD_ID.match(answer["recordId"])
    rid = answer["recordId"]

    raw = demo.cli("stream", "tail", "--from-start")
    assert raw.returncode == 0, raw.stderr
    for value in secrets.values():
        assert value not in raw.stdout
    line = {json.loads(x)["record"]["recordId"]: json.loads(x) for x in raw.stdout.splitlines()}[
        rid
    ]
    assert line["kind"] == "interaction"
    assert line["partitionKey"] == "sess-roundtrip"
    record = line["record"]
    assert record["namespace"] == "demo"
    assert record["sessionId"] == "sess-roundtrip"
    assert record["userId"] == "user-1"
    assert record["experimentConversions"] == []
    events = record["eventList"]
    assert [e["eventId"] for e in events] == ["given-id", f"{rid}-1", f"{rid}-2", f"{rid}-3"]
    assert [e["eventType"] for e in events] == ["Purchase", "View", "View", "View"]
    assert [e["itemId"] for e in events] == ["item-1", "item-2", "item-3", "item-4"]
    first = events[0]
    assert first["eventValue"] == 9.5
    assert first["impression"] == ["item-1", "item-2"]
    assert first["recommendationId"] == "rec-1"
    assert first["sentAt"] == 1_700_000_000_250  # seconds in, milliseconds stored
    assert first["metricAttribution"] == {"eventAttributionSource": "email"}
    # No sentAt: the receive time.
    assert all(e["sentAt"] == record["receivedAt"] for e in events[1:])
    # Auto-context (mobile header → Phone) merged in, never over what the client sent.
    props = [json.loads(e["properties"]) for e in events]
    assert props[0] == {"deviceType": "Phone"}
    assert props[1] == {"deviceType": "Mine"}
    assert props[2] == {"deviceType": "Phone", "color": "red", "n": 2}
    assert props[3] == {"deviceType": "Phone", "size": "L"}
    # Allow-listed request headers only.
    assert record["context"]["ua"] == "TestAgent/1.0"
    assert record["context"]["cc"] == "DE"
    assert set(record["context"]) <= {"ua", "cc", "mob"}
    assert not any(v in json.dumps(record["context"]) for v in secrets.values())


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain;charset=UTF-8"},  # navigator.sendBeacon with a string
        {"content-type": "text/plain"},
        {},  # no content type at all
        {"content-type": "application/vnd.shop+json"},
    ],
)
def test_bodies_sent_as_text_or_untyped_are_read_as_json(
    demo: Service, headers: dict[str, str]
) -> None:
    session = f"sess-media-{len(headers)}-{hashlib.sha256(repr(headers).encode()).hexdigest()[:8]}"
    body = {"sessionId": session, "eventList": [{"eventType": "View", "itemId": "item-9"}]}
    with demo.client() as client:
        response = client.post("/events/demo", content=json.dumps(body).encode(), headers=headers)
    assert response.status_code == 202, response.text
    record = by_record_id(demo)[response.json()["recordId"]]["record"]
    assert record["sessionId"] == session
    assert [e["itemId"] for e in record["eventList"]] == ["item-9"]


@pytest.mark.parametrize(
    "headers, device",
    [
        ({}, "Desktop"),
        ({"cloudfront-is-tablet-viewer": "true"}, "Tablet"),
        (
            {"cloudfront-is-mobile-viewer": "false", "cloudfront-is-tablet-viewer": "false"},
            "Desktop",
        ),
    ],
)
def test_device_type_comes_from_cloudfront_headers(
    demo: Service, headers: dict[str, str], device: str
) -> None:
    body = {"sessionId": f"sess-{device}", "eventList": [{"eventType": "View", "itemId": "i"}]}
    with demo.client() as client:
        response = post(client, "demo", body, **headers)
    assert response.status_code == 202, response.text
    record = by_record_id(demo)[response.json()["recordId"]]["record"]
    assert json.loads(record["eventList"][0]["properties"]) == {"deviceType": device}
    assert record["userId"] is None


# -- every error writes nothing, on a config written here -------------------------------------

AUTO_CONTEXT = default_document()["namespaces"]["demo"]["autoContext"]
FOR_YOU = default_document()["namespaces"]["demo"]["recommenders"]["recommend-items"]["for-you"]
SHOP_CONFIG: dict[str, Any] = {
    "version": "shop-7",
    "limits": {"maxBodyBytes": 2048},
    "namespaces": {
        "shop": {
            "autoContext": AUTO_CONTEXT,
            "recommenders": {"recommend-items": {"for-you": copy.deepcopy(FOR_YOU)}},
            "eventTargets": [{"type": "interactions", "name": "interactions"}],
        },
        # Recommenders without experiments only: reads would work, events have nowhere to go.
        # (With experiments, conversions would go to experiment tracking.)
        "catalog": {
            "recommenders": {
                "recommend-items": {"plain": {"variations": copy.deepcopy(FOR_YOU["variations"])}}
            }
        },
    },
}
CONVERSION = {"recommender": "for-you", "feature": "for-you-ranking", "metric": "recClicked"}
VIEW = {"eventType": "View", "itemId": "i"}


def test_the_shop_config_is_valid() -> None:
    assert validate_document(SHOP_CONFIG) == []


def _bad_requests(limit: int) -> list[tuple[str, dict[str, Any], int, str]]:
    """(what, httpx request kwargs for POST, status, code)."""

    def body(payload: Any, namespace: str = "shop", **headers: str) -> dict[str, Any]:
        return {
            "url": f"/events/{namespace}",
            "content": json.dumps(payload).encode(),
            "headers": {**JSON, **headers},
        }

    ok = {"sessionId": "s-bad", "userId": "u", "eventList": [VIEW]}
    # Within the limit alone (1,010 characters), over it once deviceType is merged in.
    filler = {"note": "x" * (1010 - len(json.dumps({"note": ""}, separators=(",", ":"))))}
    assert len(json.dumps(filler, separators=(",", ":"))) == 1010

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 512 + 2):
            yield b" " * 512

    return [
        ("unknown namespace", body(ok, "nope"), 404, "NamespaceNotFound"),
        ("no event targets", body(ok, "catalog"), 404, "NamespaceEventTargetsNotFound"),
        (
            "unknown recommender",
            body({**ok, "experimentConversions": [{**CONVERSION, "recommender": "nope"}]}),
            400,
            "InvalidRecommender",
        ),
        (
            "unknown feature",
            body({**ok, "experimentConversions": [{**CONVERSION, "feature": "nope"}]}),
            400,
            "InvalidExperimentFeature",
        ),
        (
            "unknown metric",
            body({**ok, "experimentConversions": [{**CONVERSION, "metric": "nope"}]}),
            400,
            "InvalidExperimentMetric",
        ),
        (
            "conversion without userId",
            body({"sessionId": "s", "experimentConversions": [CONVERSION]}),
            400,
            "UserIdRequired",
        ),
        ("no sessionId", body({"userId": "u", "eventList": [VIEW]}), 400, "ValidationError"),
        (
            "a form",
            {**body(ok), "headers": {"content-type": "application/x-www-form-urlencoded"}},
            415,
            "UnsupportedMediaType",
        ),
        (
            "multipart",
            {**body(ok), "headers": {"content-type": "multipart/form-data; boundary=x"}},
            415,
            "UnsupportedMediaType",
        ),
        (
            "XML",
            {**body(ok), "headers": {"content-type": "application/xml"}},
            415,
            "UnsupportedMediaType",
        ),
        (
            "over the limit",
            body({**ok, "pad": " " * limit}),
            413,
            "PayloadTooLarge",
        ),
        (
            "chunked, over the limit",
            {"url": "/events/shop", "content": chunks(), "headers": JSON},
            413,
            "PayloadTooLarge",
        ),
        (
            "truncated JSON",
            {**body(ok), "content": b'{"sessionId": "s", "eventList": ['},
            400,
            "InvalidJSONRequestPayload",
        ),
        (
            "invalid JSON",
            {**body(ok), "content": b'{"sessionId": s-1, "eventList": []}'},
            400,
            "InvalidJSONRequestPayload",
        ),
        (
            "properties over 1024 after auto-context",
            body({**ok, "eventList": [{**VIEW, "properties": filler}]}),
            400,
            "ValidationError",
        ),
        (
            "properties string over 1024 after auto-context",
            body({**ok, "eventList": [{**VIEW, "properties": json.dumps(filler)}]}),
            400,
            "ValidationError",
        ),
        ("unknown field", body({**ok, "trackingID": "t"}), 400, "ValidationError"),
        (
            "unknown event field",
            body({**ok, "eventList": [{**VIEW, "color": "red"}]}),
            400,
            "ValidationError",
        ),
        (
            "26 impressions",
            body({**ok, "eventList": [{**VIEW, "impression": [f"i{n}" for n in range(26)]}]}),
            400,
            "ValidationError",
        ),
        ("11 events", body({**ok, "eventList": [VIEW] * 11}), 400, "ValidationError"),
        (
            "itemId over 256",
            body({**ok, "eventList": [{**VIEW, "itemId": "i" * 257}]}),
            400,
            "ValidationError",
        ),
        (
            "eventValue beyond a 32-bit float",
            body({**ok, "eventList": [{**VIEW, "eventValue": 1e39}]}),
            400,
            "ValidationError",
        ),
        (
            "properties string that is not an object",
            body({**ok, "eventList": [{**VIEW, "properties": "[1, 2]"}]}),
            400,
            "ValidationError",
        ),
        (
            "properties string with NaN",
            body({**ok, "eventList": [{**VIEW, "properties": '{"a": NaN}'}]}),
            400,
            "ValidationError",
        ),
        (
            "properties string with an unpaired surrogate",
            body({**ok, "eventList": [{**VIEW, "properties": '{"a": "\\ud800"}'}]}),
            400,
            "ValidationError",
        ),
        ("not an object", body([ok]), 400, "ValidationError"),
    ]


def test_every_bad_request_gets_its_error_and_writes_nothing(service_factory: Any) -> None:
    service = service_factory(SHOP_CONFIG)
    limit = SHOP_CONFIG["limits"]["maxBodyBytes"]
    with service.client() as client:
        # Controls: requests just like the bad ones but valid are accepted.
        accepted = [
            post(client, "shop", {"sessionId": "s", "userId": "u", "eventList": [VIEW]}),
            post(
                client,
                "shop",
                {"sessionId": "s", "userId": "u", "experimentConversions": [CONVERSION]},
            ),
            client.post(
                "/events/shop",
                content=iter([b'{"sessionId": "s", ', b'"eventList": [{"eventType": "V"}]}']),
                headers=JSON,
            ),
            post(
                client,
                "shop",
                {"sessionId": "s", "eventList": [{**VIEW, "properties": {"k": "v" * 900}}]},
            ),
        ]
        assert [r.status_code for r in accepted] == [202] * 4, [r.text for r in accepted]
        before = len(service.tail())
        assert before == 4

        for what, request, status, code in _bad_requests(limit):
            response = client.post(**request)
            body = assert_error(response, status, code, what)
            assert response.headers["x-personalization-config-version"] == "shop-7", what
            if code == "InvalidJSONRequestPayload":
                assert "byte" in body["message"], body
            if what.startswith("unknown recommender"):
                assert "nope" in body["message"]

        wrong_method = client.get("/events/shop")
        assert_error(wrong_method, 405, "MethodNotAllowed")
    assert len(service.tail()) == before


def test_what_the_sample_accepted_is_accepted(service_factory: Any) -> None:
    """Bodies the sample project took: ``trackingId`` (ignored), nothing to record (a success
    that writes nothing), a conversion naming neither feature nor metric where the config has
    one of each, a conversion without a session, ``properties: ""``."""
    two = copy.deepcopy(SHOP_CONFIG)
    rec = two["namespaces"]["shop"]["recommenders"]["recommend-items"]["for-you"]
    rec["experiments"]["second"] = copy.deepcopy(rec["experiments"]["for-you-ranking"])
    two["namespaces"]["shop"]["recommenders"]["recommend-items"]["two"] = rec
    del two["namespaces"]["shop"]["recommenders"]["recommend-items"]["for-you"]
    two["namespaces"]["shop"]["recommenders"]["recommend-items"]["for-you"] = copy.deepcopy(
        SHOP_CONFIG["namespaces"]["shop"]["recommenders"]["recommend-items"]["for-you"]
    )
    assert validate_document(two) == []
    service = service_factory(two)
    with service.client() as client:
        for nothing in ({}, {"sessionId": "s", "eventList": [], "experimentConversions": []}):
            empty = post(client, "shop", nothing)
            assert empty.status_code == 202, empty.text
            assert empty.json() == {"accepted": 0, "recordId": None}
            assert empty.headers["cache-control"] == "no-store"
        assert service.tail() == []

        tracked = post(
            client,
            "shop",
            {"trackingId": "tid-1", "sessionId": "s1", "eventList": [{**VIEW, "properties": ""}]},
        )
        assert tracked.status_code == 202, tracked.text
        assert tracked.headers["cache-control"] == "no-store"
        unnamed = post(
            client,
            "shop",
            {"userId": "u9", "experimentConversions": [{"recommender": "for-you", "value": 2}]},
        )
        assert unnamed.status_code == 202, unnamed.text
        ambiguous = post(
            client, "shop", {"userId": "u9", "experimentConversions": [{"recommender": "two"}]}
        )
        assert_error(ambiguous, 400, "InvalidExperimentFeature")
        records = by_record_id(service)

    event = records[tracked.json()["recordId"]]["record"]
    assert "trackingId" not in event
    # Only auto-context, none of the client's own: "" was no properties at all.
    assert set(json.loads(event["eventList"][0]["properties"])) <= {"deviceType"}
    conversion = records[unnamed.json()["recordId"]]
    assert conversion["partitionKey"] == "u9"
    assert conversion["record"]["sessionId"] == ""
    assert conversion["record"]["experimentConversions"] == [
        {"recommender": "for-you", "feature": "for-you-ranking", "metric": "recClicked", "value": 2}
    ]
    assert len(records) == 2


def test_huge_integer_in_properties_string_is_a_400(service_factory: Any) -> None:
    """Python's json refuses integers of over 4,300 digits with a ValueError of its own."""
    config = {**SHOP_CONFIG, "limits": {"maxBodyBytes": 65536}}
    service = service_factory(config)
    body = {
        "sessionId": "s",
        "eventList": [{**VIEW, "properties": '{"a": ' + "7" * 5000 + "}"}],
    }
    with service.client() as client:
        assert_error(post(client, "shop", body), 400, "ValidationError")
    assert service.tail() == []


# -- API keys ---------------------------------------------------------------------------------

API_KEY = "p13n-test-key-3f9c2a71d0e4"
WRONG_KEY = "p13n-wrong-key-88aa41c2"


def test_api_keys(service_factory: Any) -> None:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    config = {
        "version": "auth-1",
        "auth": {"apiKeys": [{"id": "other", "sha256": "0" * 64}, {"id": "web", "sha256": digest}]},
        "namespaces": {"shop": SHOP_CONFIG["namespaces"]["shop"]},
    }
    assert validate_document(config) == []
    service = service_factory(config)
    body = {"sessionId": "s", "eventList": [VIEW]}
    with service.client() as client:
        assert_error(post(client, "shop", body), 401, "MissingApiKey")
        assert_error(post(client, "shop", body, **{"x-api-key": WRONG_KEY}), 403, "InvalidApiKey")
        assert_error(post(client, "shop", body, **{"x-api-key": ""}), 403, "InvalidApiKey")
        # The unknown namespace is not revealed to a caller without a key.
        assert_error(post(client, "nope", body), 401, "MissingApiKey")
        accepted = post(client, "shop", body, **{"x-api-key": API_KEY})
        assert accepted.status_code == 202, accepted.text
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert_error(client.get("/metrics"), 401, "MissingApiKey")
        assert client.get("/metrics", headers={"x-api-key": API_KEY}).status_code == 200
    records = service.tail()
    assert [r["record"]["recordId"] for r in records] == [accepted.json()["recordId"]]
    assert service.stop() == 0  # flushes the logs
    log = service.log_path.read_text()
    assert "POST /events/shop 202" in log  # the log is there, and has the requests
    assert API_KEY not in log
    assert WRONG_KEY not in log
    assert API_KEY not in json.dumps(records)


# -- many clients at once ---------------------------------------------------------------------

CLIENTS = 50
REQUESTS = 200


def test_concurrent_clients_keep_per_session_order(service_factory: Any) -> None:
    service = service_factory()

    def run(client_no: int) -> list[str]:
        ids = []
        with service.client() as client:
            for i in range(REQUESTS):
                body = {
                    "sessionId": f"session-{client_no}",
                    "eventList": [{"eventType": "View", "eventId": f"{client_no}-{i}"}],
                }
                response = post(client, "demo", body)
                assert response.status_code == 202, response.text
                ids.append(response.json()["recordId"])
        return ids

    with ThreadPoolExecutor(CLIENTS) as pool:
        record_ids = [rid for ids in pool.map(run, range(CLIENTS)) for rid in ids]
    assert len(set(record_ids)) == CLIENTS * REQUESTS

    lines = service.tail()
    assert len(lines) == CLIENTS * REQUESTS
    assert {line["record"]["recordId"] for line in lines} == set(record_ids)
    sessions: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for line in lines:
        record = line["record"]
        sessions[record["sessionId"]].append(
            (line["shardId"], int(line["sequenceNumber"]), record["eventList"][0]["eventId"])
        )
    assert len(sessions) == CLIENTS
    for session, entries in sessions.items():
        client_no = session.removeprefix("session-")
        assert len({shard for shard, _, _ in entries}) == 1, session  # one key, one shard
        in_stream = [eid for _, _, eid in sorted(entries)]
        assert in_stream == [f"{client_no}-{i}" for i in range(REQUESTS)], session


# -- any body: 202 and a faithful record, or a 4xx and nothing written ------------------------

MISSING: Any = object()
FLOAT32_MAX = 3.4028234663852886e38

IDS = st.text(min_size=1, max_size=12) | st.text(min_size=240, max_size=256)
BAD_IDS = (
    st.just("") | st.text(min_size=257, max_size=270) | st.integers() | st.lists(IDS, max_size=1)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
PROPS = st.dictionaries(
    st.text(max_size=15) | st.just("deviceType"),
    SCALARS | st.lists(SCALARS, max_size=3) | st.text(min_size=300, max_size=700),
    max_size=4,
)
BAD_PROPS = (
    st.sampled_from(
        ["{", "[1]", '"text"', "1", '{"a": NaN}', '{"a": Infinity}', '{"a": "\\ud800"}']
    )
    | st.lists(st.integers(), max_size=2)
    | st.integers()
)


@dataclass
class Faults:
    """Which drawn values are invalid. ``mode``: "clean" none; "single" only the value drawn
    after ``countdown`` valid ones (so it alone decides the answer); "many" each a third of
    the time."""

    mode: str
    countdown: int = 0
    ok: bool = True


class Fields:
    """Draws field values, recording in ``faults`` whether any was invalid."""

    def __init__(self, draw: st.DrawFn, faults: Faults) -> None:
        self.draw = draw
        self.faults = faults

    def __call__(self, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
        faults = self.faults
        if faults.mode == "single":
            faults.countdown -= 1
            fault = faults.countdown == 0
        else:
            fault = faults.mode == "many" and self.draw(st.integers(0, 2)) == 0
        if fault:
            faults.ok = False
            return self.draw(invalid)
        return self.draw(valid)

    def optional(self, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
        """Absent, null or a valid value are all fine for an optional field."""
        return self(st.just(MISSING) | st.none() | valid, invalid)


def present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not MISSING}


@st.composite
def events(draw: st.DrawFn, faults: Faults) -> dict[str, Any]:
    f = Fields(draw, faults)
    props = st.sampled_from([MISSING, None, ""]) | PROPS | PROPS.map(json.dumps)
    event = {
        "eventType": f(IDS, st.just(MISSING) | st.none() | BAD_IDS),
        "eventId": f.optional(IDS, BAD_IDS),
        "itemId": f.optional(IDS, BAD_IDS),
        "eventValue": f.optional(
            st.floats(-FLOAT32_MAX, FLOAT32_MAX) | st.integers(-(10**9), 10**9),
            st.floats(min_value=1e39, max_value=1e300) | st.text(max_size=3) | st.booleans(),
        ),
        "impression": f.optional(
            st.lists(IDS, max_size=25),
            st.lists(IDS, min_size=26, max_size=28) | st.lists(BAD_IDS, min_size=1, max_size=2),
        ),
        "properties": f(props, BAD_PROPS),
        "recommendationId": f.optional(
            st.text(min_size=1, max_size=40), st.just("") | st.text(min_size=41, max_size=45)
        ),
        "sentAt": f.optional(
            st.floats(min_value=0, max_value=32503680000, exclude_min=True, exclude_max=True)
            | st.integers(1, 32503679999),
            st.sampled_from([0, -1, 32503680000, 1e12]) | st.text(max_size=3),
        ),
        "metricAttribution": f.optional(
            st.fixed_dictionaries({"eventAttributionSource": IDS}),
            st.just({})
            | st.fixed_dictionaries({"eventAttributionSource": BAD_IDS})
            | st.just({"eventAttributionSource": "a", "x": 1}),
        ),
        "colour": f(st.just(MISSING), st.just("red")),
    }
    return present(event)


@st.composite
def conversions(draw: st.DrawFn, faults: Faults) -> dict[str, Any]:
    f = Fields(draw, faults)
    conversion = {
        "recommender": f(st.just("for-you"), st.sampled_from(["nope", "similar", "", MISSING, 3])),
        # Either may be left out: the recommender has one experiment, the experiment one metric.
        "feature": f(st.sampled_from(["for-you-ranking", MISSING]), st.just("nope")),
        "metric": f(st.sampled_from(["recClicked", MISSING]), st.just("nope")),
        "value": f.optional(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=2)),
    }
    return present(conversion)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A request body and whether the service must accept it (properties length aside)."""
    faults = Faults(draw(st.sampled_from(["clean", "single", "many"])), draw(st.integers(1, 30)))
    f = Fields(draw, faults)
    session = f(IDS | st.just(MISSING) | st.none(), BAD_IDS)
    user = f(IDS | IDS | st.just(MISSING) | st.none(), BAD_IDS)
    event_list = f(
        st.lists(events(faults), min_size=1, max_size=10)
        | st.lists(events(faults), min_size=1, max_size=2)
        | st.sampled_from([MISSING, []]),
        st.none()
        | st.integers()
        | st.text(max_size=2)
        | st.lists(events(faults), min_size=11, max_size=12),
    )
    conversion_list = f(
        st.just(MISSING) | st.lists(conversions(faults), max_size=3),
        st.none() | st.just("x") | st.just([1]),
    )
    n_events = len(event_list) if isinstance(event_list, list) else 0
    n_conversions = len(conversion_list) if isinstance(conversion_list, list) else 0
    # Nothing to record is a success that writes nothing; conversions alone need no session.
    ok = (
        faults.ok
        and not (n_conversions and user in (MISSING, None))
        and not (n_events and session in (MISSING, None))
    )
    body = present(
        {
            "sessionId": session,
            "userId": user,
            "eventList": event_list,
            "experimentConversions": conversion_list,
            "trackingId": f(st.sampled_from([MISSING, None, "t"]), st.just({"t": 1})),
        }
    )
    return body, bool(ok and faults.ok)


DEVICE_HEADERS = {
    "Desktop": {},
    "Phone": {"cloudfront-is-mobile-viewer": "true"},
    "Tablet": {"cloudfront-is-tablet-viewer": "true"},
}


def expected_properties(given: Any, device: str) -> dict[str, Any] | None:
    """The merged properties, or None when they are over Personalize's 1,024 characters."""
    if isinstance(given, str):
        given = json.loads(given) if given else None
    merged = {"deviceType": device, **(given or {})}
    text = json.dumps(merged, separators=(",", ":"), ensure_ascii=False)
    return merged if len(text) <= 1024 else None


def float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


class InProcess:
    def __init__(self, data_dir: Path) -> None:
        holder = ConfigHolder(BuiltinSource(), adjust=lambda c: c.with_data_dir(str(data_dir)))
        self.client = TestClient(create_app(holder), raise_server_exceptions=False)
        self.data_dir = data_dir
        self.codec = Codec.packaged()

    def __enter__(self) -> InProcess:
        self.client.__enter__()
        self.reader = EmbeddedReader(str(self.data_dir / "stream.db"))
        self.cursors = [self.reader.open(s.shard_id) for s in self.reader.list_shards()]
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.client.__exit__(*exc)

    def new_records(self) -> list[dict[str, Any]]:
        found = []
        for cursor in self.cursors:
            for record in cursor.read(1000).records:
                name, fields = self.codec.decode(record.data)
                assert name == INTERACTION
                # Stored without its partition key (the stream record carries it).
                assert fields["sessionId"] == ""
                found.append(with_partition_key(fields, record.partition_key))
        return found


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with InProcess(tmp_path_factory.mktemp("inproc")) as app:
        yield app


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=bodies(), device=st.sampled_from(sorted(DEVICE_HEADERS)))
# Bodies that once got a 202 with a record Personalize would refuse, or a 500.
@example(
    case=({"sessionId": "s", "eventList": [{**VIEW, "eventValue": 1e39}]}, False), device="Desktop"
)
@example(
    case=({"sessionId": "s", "eventList": [{**VIEW, "properties": '{"a": NaN}'}]}, False),
    device="Desktop",
)
@example(
    case=({"sessionId": "s", "eventList": [{**VIEW, "properties": '{"a": 1e999}'}]}, False),
    device="Desktop",
)
@example(
    case=({"sessionId": "s", "eventList": [{**VIEW, "properties": '{"a": "\\udc00"}'}]}, False),
    device="Desktop",
)
@example(
    case=(
        {"sessionId": "s", "eventList": [{**VIEW, "properties": '{"a": ' + "9" * 4400 + "}"}]},
        False,
    ),
    device="Desktop",
)
@example(
    case=({"sessionId": "s", "eventList": [{**VIEW, "eventValue": FLOAT32_MAX}]}, True),
    device="Desktop",
)
def test_any_body_is_accepted_whole_or_refused_without_a_trace(
    in_process: InProcess, case: tuple[dict[str, Any], bool], device: str
) -> None:
    body, valid = case
    if valid:
        merged = (
            [expected_properties(event.get("properties"), device) for event in body["eventList"]]
            if "eventList" in body
            else []
        )
        valid = all(m is not None for m in merged)
    response = in_process.client.post(
        "/events/demo",
        content=json.dumps(body).encode(),
        headers={**JSON, **DEVICE_HEADERS[device]},
    )
    written = in_process.new_records()
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    if not valid:
        assert response.status_code == 400, (body, response.text)
        assert set(response.json()) == ERROR_KEYS
        assert written == []
        return
    assert response.status_code == 202, (body, response.text)
    answer = response.json()
    if not body.get("eventList") and not body.get("experimentConversions"):
        assert answer == {"accepted": 0, "recordId": None}
        assert written == []
        return
    assert [r["recordId"].hex() for r in written] == [answer["recordId"]]
    record = written[0]
    events = body.get("eventList", [])
    assert answer["accepted"] == len(events)
    assert record["namespace"] == "demo"
    assert record["sessionId"] == (body.get("sessionId") or "")
    assert record["userId"] == body.get("userId")
    assert record["context"] == {
        "ua": "testclient",
        **({"mob": "true"} if device == "Phone" else {"tab": "true"} if device == "Tablet" else {}),
    }
    assert len(record["eventList"]) == len(events)
    for index, (sent, stored) in enumerate(zip(events, record["eventList"], strict=True)):
        assert event_id(record, index) == (sent.get("eventId") or f"{answer['recordId']}-{index}")
        assert stored["eventType"] == sent["eventType"]
        assert stored["itemId"] == sent.get("itemId")
        assert stored["recommendationId"] == sent.get("recommendationId")
        assert stored["impression"] == (sent.get("impression") or [])
        value = sent.get("eventValue")
        assert stored["eventValue"] == (None if value is None else float32(value))
        sent_at = sent.get("sentAt")
        assert stored["sentAt"] == (
            record["receivedAt"] if sent_at is None else int(float(sent_at) * 1000)
        )
        assert stored["metricAttribution"] == sent.get("metricAttribution")
        assert json.loads(stored["properties"]) == expected_properties(
            sent.get("properties"), device
        )
    expected_conversions = [
        {
            "recommender": c["recommender"],
            "feature": "for-you-ranking",
            "metric": "recClicked",
            "value": None if c.get("value") is None else float(c["value"]),
        }
        for c in body.get("experimentConversions", [])
    ]
    assert record["experimentConversions"] == expected_conversions
