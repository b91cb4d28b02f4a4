"""The API as a Lambda function, invoked with the events API Gateway and function URLs send.

The events are written here after the examples in the AWS documentation (HTTP API payload
2.0, REST API proxy integration, function URL requests). The stream is a real Kinesis stream on
kinesis-local; the ``http`` variation asks the fake recommender. Every container a test starts
is closed (lifespan shut down, producer drained, loop closed).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import consumers.lambda_handler
from p13n import lambda_api
from p13n.app import holder_from_environment
from p13n.lambda_api import LambdaContainer
from schemas.codec import Codec
from schemas.records import with_partition_key
from schemas.sources import ConfigHolder
from streams.aggregation import unpack
from tests.fixtures.fake_recommender import FakeRecommender
from tests.p13n.test_kinesis_service import kinesis_config, raw_records

API_KEY = "lambda-secret-key"


@dataclass
class Context:
    """The attributes of the Lambda context object that Powertools and Mangum read."""

    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    function_name: str = "p13n-api"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:p13n-api"
    memory_limit_in_mb: int = 512
    log_group_name: str = "/aws/lambda/p13n-api"
    log_stream_name: str = "2024/01/01/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


# -- events, after the AWS documentation's examples ---------------------------------------------


def _split(target: str) -> tuple[str, str]:
    path, _, query = target.partition("?")
    return path, query


def _query_map(query: str) -> dict[str, str] | None:
    if not query:
        return None
    return dict(part.split("=", 1) for part in query.split("&"))


def http_api_event(
    method: str,
    target: str,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    base64_body: bool = False,
    domain: str = "r3pmxmplak.execute-api.us-east-1.amazonaws.com",
) -> dict[str, Any]:
    """API Gateway HTTP API, payload format 2.0 (``$default`` route)."""
    path, query = _split(target)
    all_headers = {
        "accept": "*/*",
        "content-length": str(len(body or "")),
        "host": domain,
        "user-agent": "curl/8.4.0",
        "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
        "x-forwarded-for": "205.255.255.176",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
        **(headers or {}),
    }
    if base64_body and body is not None:
        body = base64.b64encode(body.encode()).decode()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": all_headers,
        **({"queryStringParameters": _query_map(query)} if query else {}),
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "205.255.255.176",
                "userAgent": "curl/8.4.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2020:05:16:23 +0000",
            "timeEpoch": 1583817383220,
        },
        **({"body": body} if body is not None else {}),
        "isBase64Encoded": base64_body,
    }


def function_url_event(method: str, target: str, **options: Any) -> dict[str, Any]:
    """A Lambda function URL request: payload 2.0 as well, with the URL's own domain and an
    IAM-less authorizer left out (``AuthType: NONE``)."""
    event = http_api_event(
        method, target, domain="a2b3xmplfsc7kpqvn.lambda-url.us-east-1.on.aws", **options
    )
    event["requestContext"]["apiId"] = "a2b3xmplfsc7kpqvn"
    event["requestContext"]["domainPrefix"] = "a2b3xmplfsc7kpqvn"
    return event


def rest_api_event(
    method: str,
    target: str,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """API Gateway REST API, Lambda proxy integration (``/{proxy+}`` on stage ``prod``)."""
    path, query = _split(target)
    all_headers = {
        "Accept": "*/*",
        "Host": "70ixmpl4fl.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "curl/8.4.0",
        "X-Amzn-Trace-Id": "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
        "X-Forwarded-For": "52.255.255.12",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **(headers or {}),
    }
    queries = _query_map(query)
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {name: [value] for name, value in all_headers.items()},
        "queryStringParameters": queries,
        "multiValueQueryStringParameters": (
            {name: [value] for name, value in queries.items()} if queries else None
        ),
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "2gxmpl",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "extendedRequestId": "JJbxmplHYosFVYQ=",
            "requestTime": "10/Mar/2020:00:03:59 +0000",
            "path": f"/prod{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "prod",
            "domainPrefix": "70ixmpl4fl",
            "requestTimeEpoch": 1583798639428,
            "requestId": "77375676-xmpl-4b79-853a-f982474efe18",
            "identity": {"sourceIp": "52.255.255.12", "userAgent": "curl/8.4.0"},
            "domainName": "70ixmpl4fl.execute-api.us-east-1.amazonaws.com",
            "apiId": "70ixmpl4fl",
        },
        "body": body,
        "isBase64Encoded": False,
    }


EVENT_KINDS: dict[str, Callable[..., dict[str, Any]]] = {
    "http-api-v2": http_api_event,
    "rest-api-v1": rest_api_event,
    "function-url": function_url_event,
}


def events_body(session: str, item: str) -> str:
    return json.dumps(
        {
            "sessionId": session,
            "userId": "u-1",
            "eventList": [{"eventType": "View", "itemId": item, "eventId": f"{session}-{item}"}],
        }
    )


def json_body(answer: dict[str, Any]) -> Any:
    assert not answer.get("isBase64Encoded"), "JSON answers travel as text"
    return json.loads(answer["body"])


def header(answer: dict[str, Any], name: str) -> str | None:
    """A response header, from whichever of the two response shapes came back."""
    for key, value in answer.get("headers", {}).items():
        if key.lower() == name:
            return str(value)
    for key, values in answer.get("multiValueHeaders", {}).items():
        if key.lower() == name:
            return str(values[0])
    return None


def records_in(endpoint: str, stream: str) -> list[dict[str, Any]]:
    codec = Codec.packaged()
    out = []
    for records in raw_records(endpoint, stream).values():
        for record in records:
            for partition_key, _explicit, data in unpack(record["Data"]) or []:
                out.append(with_partition_key(codec.decode(data)[1], partition_key))
    return out


# -- containers ---------------------------------------------------------------------------------


@dataclass
class Deployed:
    container: LambdaContainer
    loads: list[ConfigHolder]
    endpoint: str
    stream: str

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.container(event, Context())


@pytest.fixture
def deploy(
    kinesis_local: str,
    make_kinesis_stream: Callable[..., str],
    fake_recommender: FakeRecommender,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Deployed]]:
    """``deploy(**config changes)``: a container for a config on a new Kinesis stream, read
    from ``P13N_CONFIG`` as on Lambda; closed after the test."""
    started: list[LambdaContainer] = []

    def make(stream_type: str = "kinesis", **changes: Any) -> Deployed:
        stream = make_kinesis_stream(kinesis_local)
        document = kinesis_config(kinesis_local, stream)
        if stream_type != "kinesis":
            document["stream"] = {"type": stream_type}
        document["namespaces"]["shop"]["recommenders"] = {
            "recommend-items": {
                "recs": {
                    "variations": {
                        "remote": {
                            "type": "http",
                            "url": fake_recommender.url + "/recs/{userId}?n={numResults}",
                        }
                    }
                }
            }
        }
        document.update(changes)
        path = tmp_path / f"{stream}.json"
        path.write_text(json.dumps(document))
        monkeypatch.setenv("P13N_CONFIG", str(path))
        monkeypatch.setenv("P13N_DATA_DIR", str(tmp_path / "data"))
        loads: list[ConfigHolder] = []

        def load() -> ConfigHolder:
            loads.append(holder_from_environment())
            return loads[-1]

        container = LambdaContainer(load)
        started.append(container)
        return Deployed(container, loads, kinesis_local, stream)

    yield make
    for container in started:
        container.close()


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EVENT_KINDS))
def test_an_accepted_event_is_in_the_stream_when_the_answer_returns(
    deploy: Callable[..., Deployed], kind: str
) -> None:
    deployed = deploy()
    event = EVENT_KINDS[kind](
        "POST",
        "/events/shop",
        body=events_body(f"s-{kind}", "item-7"),
        headers={"content-type": "application/json"},
    )

    answer = deployed(event)

    assert answer["statusCode"] == 202, answer
    assert json_body(answer)["accepted"] == 1
    assert header(answer, "x-personalization-config-version") == "k1"
    # No waiting: the producer answered only after PutRecords succeeded.
    (record,) = records_in(deployed.endpoint, deployed.stream)
    assert record["sessionId"] == f"s-{kind}"
    assert record["recordId"].hex() == json_body(answer)["recordId"]
    assert [e["itemId"] for e in record["eventList"]] == ["item-7"]


def test_a_base64_encoded_body_is_decoded(deploy: Callable[..., Deployed]) -> None:
    deployed = deploy()
    event = http_api_event(
        "POST",
        "/events/shop",
        body=events_body("s-b64", "item-é"),
        headers={"content-type": "application/json"},
        base64_body=True,
    )

    answer = deployed(event)

    assert answer["statusCode"] == 202, answer
    (record,) = records_in(deployed.endpoint, deployed.stream)
    assert record["eventList"][0]["itemId"] == "item-é"


@pytest.mark.parametrize("kind", list(EVENT_KINDS))
def test_a_gzipped_answer_travels_base64_encoded(
    deploy: Callable[..., Deployed], kind: str
) -> None:
    deployed = deploy()
    target = "/recommend-items/shop/recs/u-9?numResults=100"
    answer = deployed(EVENT_KINDS[kind]("GET", target, headers={"accept-encoding": "gzip"}))

    assert answer["statusCode"] == 200, answer
    assert answer["isBase64Encoded"] is True
    assert header(answer, "content-encoding") == "gzip"
    body = json.loads(gzip.decompress(base64.b64decode(answer["body"])))
    assert len(body["itemList"]) == 100


@pytest.mark.parametrize("kind", list(EVENT_KINDS))
def test_recommendations_come_from_the_http_variation(
    deploy: Callable[..., Deployed], fake_recommender: FakeRecommender, kind: str
) -> None:
    deployed = deploy()

    answer = deployed(EVENT_KINDS[kind]("GET", "/recommend-items/shop/recs/u-9?numResults=3"))

    assert answer["statusCode"] == 200, answer
    body = json_body(answer)
    assert [item["itemId"] for item in body["itemList"]] == ["item-1", "item-2", "item-3"]
    assert fake_recommender.paths[-1].startswith("/recs/u-9")
    assert header(answer, "x-p13n-cache") == "miss"


@pytest.mark.parametrize("kind", list(EVENT_KINDS))
def test_bad_input_is_a_400_json_error_and_writes_nothing(
    deploy: Callable[..., Deployed], kind: str
) -> None:
    deployed = deploy()
    event = EVENT_KINDS[kind](
        "POST",
        "/events/shop",
        body=json.dumps({"sessionId": "s", "eventList": [{}]}),
        headers={"content-type": "application/json"},
    )

    answer = deployed(event)

    assert answer["statusCode"] == 400
    body = json_body(answer)
    assert body["type"] == "Validation"
    assert body["code"] == "ValidationError"
    assert "eventType" in body["message"]
    assert records_in(deployed.endpoint, deployed.stream) == []


def test_api_keys_are_checked(deploy: Callable[..., Deployed]) -> None:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    deployed = deploy(auth={"apiKeys": [{"id": "web", "sha256": digest}]})
    target = "/recommend-items/shop/recs/u-1"

    missing = deployed(http_api_event("GET", target))
    wrong = deployed(rest_api_event("GET", target, headers={"x-api-key": "nope"}))
    right = deployed(function_url_event("GET", target, headers={"x-api-key": API_KEY}))
    health = deployed(http_api_event("GET", "/healthz"))

    assert (missing["statusCode"], json_body(missing)["code"]) == (401, "MissingApiKey")
    assert (wrong["statusCode"], json_body(wrong)["code"]) == (403, "InvalidApiKey")
    assert right["statusCode"] == 200
    assert health["statusCode"] == 200


def test_the_cold_start_work_is_done_once_per_container(
    deploy: Callable[..., Deployed],
) -> None:
    deployed = deploy()
    assert not deployed.container.started  # nothing happens before the first invocation
    assert deployed.loads == []

    for index in range(3):
        event = http_api_event(
            "POST",
            "/events/shop",
            body=events_body("s-warm", f"item-{index}"),
            headers={"content-type": "application/json"},
        )
        assert deployed(event)["statusCode"] == 202

    assert len(deployed.loads) == 1
    assert len(records_in(deployed.endpoint, deployed.stream)) == 3


def test_an_embedded_stream_fails_at_the_first_invocation_with_a_503(
    deploy: Callable[..., Deployed], caplog: pytest.LogCaptureFixture
) -> None:
    deployed = deploy(stream_type="embedded")
    caplog.set_level(logging.ERROR, logger=lambda_api.SERVICE)

    answers = [deployed(kind("GET", "/healthz")) for kind in EVENT_KINDS.values()]

    for answer in answers:
        assert answer["statusCode"] == 503
        assert json_body(answer) == {
            "type": "Unavailable",
            "code": "ServiceUnavailable",
            "message": "The service could not start; the function's logs say why",
        }
    assert not deployed.container.started
    reasons = [getattr(r, "reason", "") for r in caplog.records]
    assert any("stream must be kinesis, not embedded" in reason for reason in reasons)


def test_the_module_handler_builds_nothing_at_import_and_injects_the_lambda_context(
    deploy: Callable[..., Deployed],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deployed = deploy()
    assert not lambda_api.container.started
    # The module's container, with this test's loader and stream.
    monkeypatch.setattr(lambda_api, "container", deployed.container)
    caplog.set_level(logging.INFO, logger=lambda_api.SERVICE)

    answer = lambda_api.handler(http_api_event("GET", "/healthz"), Context(aws_request_id="req-1"))

    assert answer["statusCode"] == 200
    (cold,) = [r for r in caplog.records if r.getMessage() == "cold start done"]
    line = json.loads(lambda_api.logger.registered_formatter.format(cold))
    # (Powertools' cold_start flag is per process: an earlier test's invocation has used it up.)
    assert line["function_request_id"] == "req-1" and "cold_start" in line
    # The rooms' loggers write through the same Powertools handler while the app runs...
    assert logging.getLogger("p13n").handlers == logging.getLogger(lambda_api.SERVICE).handlers
    deployed.container.close()
    # ...and are given back as they were when the container is closed (tests only).
    assert logging.getLogger("p13n").propagate


def test_the_consumer_handler_is_importable() -> None:
    # Its behaviour is proven in tests/consumers/test_lambda_handler.py.
    assert callable(consumers.lambda_handler.handler)
    assert callable(lambda_api.handler)
