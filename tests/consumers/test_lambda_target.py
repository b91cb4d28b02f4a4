"""The lambda target against a fake Lambda that runs Python functions (``tests.fixtures.
fake_lambda``), and once against moto server's Docker-less Lambda.

moto can invoke without Docker only through its "simple" backend, which echoes the payload
and can neither run a function nor fail one; it proves the Invoke request is what the real
REST API accepts, and the fake covers function errors, throttling and missing functions.
"""

from __future__ import annotations

import io
import json
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aws.clients import client
from consumers.base import Deferred
from consumers.targets import build_target
from consumers.targets.jsonshape import sample_json
from consumers.targets.lambda_function import LambdaTarget
from schemas.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermanentError,
    Throttled,
    Unavailable,
    UpstreamError,
)
from tests.consumers.json_target_records import (
    CONTEXT,
    deliveries,
    event,
    record,
    records_of,
    target_config,
)
from tests.fixtures.fake_lambda import FakeLambda, Invocation


@pytest.fixture
def make_target() -> Iterator[Callable[..., LambdaTarget]]:
    opened: list[LambdaTarget] = []

    def make(endpoint: str, function_arn: str) -> LambdaTarget:
        config = target_config("lambda", functionArn=function_arn, endpoint_url=endpoint)
        target = build_target(config, CONTEXT)
        assert isinstance(target, LambdaTarget)
        target.open()
        opened.append(target)
        return target

    yield make
    for target in opened:
        target.close()


def received(invocations: list[Invocation]) -> list[list[str]]:
    return [
        [r["body"]["eventList"][0]["eventId"] for r in call.payload["records"]]
        for call in invocations
    ]


def accept(event: Any) -> dict[str, Any]:
    return {"ok": len(event["records"])}


def test_a_batch_is_one_synchronous_invocation_of_sample_json_records(
    fake_lambda: FakeLambda, make_target: Callable[..., LambdaTarget]
) -> None:
    arn = fake_lambda.add_function("consumer", accept)
    batch = deliveries(records_of(["a", "b", "a", "c"]))
    replayed = deliveries([record("r", event("r-0"), userId="u1")], replay=True)
    target = make_target(fake_lambda.endpoint, arn)

    failures = target.deliver([*batch, *replayed])

    assert failures == {}
    [call] = fake_lambda.invocations()
    assert call.function == "consumer"
    assert call.invocation_type == "RequestResponse"
    assert call.payload == {
        "records": [sample_json(d.fields, replay=d.replay) for d in [*batch, *replayed]]
    }
    assert call.payload["records"][-1]["replay"] is True
    assert "replay" not in call.payload["records"][0]


def test_invocations_stay_under_6_mb_and_a_record_too_large_alone_is_refused(
    fake_lambda: FakeLambda, make_target: Callable[..., LambdaTarget]
) -> None:
    arn = fake_lambda.add_function("consumer", accept)

    def sized(session: str, chars: int) -> dict[str, Any]:
        return record(session, event(f"{session}-0", properties=json.dumps({"p": "x" * chars})))

    batch = deliveries([sized(f"k{n}", 900_000) for n in range(8)] + [sized("huge", 6_100_000)])
    target = make_target(fake_lambda.endpoint, arn)

    failures = target.deliver(batch)

    # THEN 8 x 900 kB go in two invocations (6 + 2) and the 6.1 MB record is dead-lettered
    assert list(failures) == [8]
    assert isinstance(failures[8], PayloadTooLarge)
    assert received(fake_lambda.invocations()) == [
        [f"k{n}-0" for n in range(6)],
        ["k6-0", "k7-0"],
    ]


def test_a_function_error_is_retryable_and_ends_the_batch(
    fake_lambda: FakeLambda, make_target: Callable[..., LambdaTarget]
) -> None:
    def failing(event: Any) -> Any:
        raise KeyError("eventType")

    arn = fake_lambda.add_function("consumer", failing)
    target = make_target(fake_lambda.endpoint, arn)

    failures = target.deliver(deliveries(records_of(["a", "b", "a"])))

    assert set(failures) == {0, 1, 2}
    error = failures[0]
    assert isinstance(error, UpstreamError)
    assert error.code == "FunctionError"
    assert "Unhandled" in error.message
    assert "KeyError" in error.message
    assert "eventType" in error.message


def test_after_a_failed_invocation_the_rest_is_deferred(
    fake_lambda: FakeLambda, make_target: Callable[..., LambdaTarget]
) -> None:
    calls = []

    def second_fails(event: Any) -> Any:
        calls.append(event)
        if len(calls) == 2:
            raise RuntimeError("downstream database is down")
        return None

    arn = fake_lambda.add_function("consumer", second_fails)

    def sized(session: str) -> dict[str, Any]:
        return record(session, event(f"{session}-0", properties=json.dumps({"p": "x" * 2_500_000})))

    # two records per invocation: [a b] [c d] [e]
    batch = deliveries([sized(s) for s in "abcde"])
    target = make_target(fake_lambda.endpoint, arn)

    failures = target.deliver(batch)

    assert received(fake_lambda.invocations()) == [["a-0", "b-0"], ["c-0", "d-0"]]
    assert sorted(failures) == [2, 3, 4]
    assert isinstance(failures[2], UpstreamError)
    assert isinstance(failures[3], UpstreamError)
    assert isinstance(failures[4], Deferred)


def test_throttling_is_retryable_with_retry_after(
    fake_lambda: FakeLambda, make_target: Callable[..., LambdaTarget]
) -> None:
    arn = fake_lambda.add_function("consumer", accept)
    fake_lambda.fail_next("TooManyRequestsException", 429, retry_after=3)
    target = make_target(fake_lambda.endpoint, arn)

    failures = target.deliver(deliveries(records_of(["a", "b"])))

    assert set(failures) == {0, 1}
    assert isinstance(failures[0], Throttled)
    assert failures[0].retry_after == 3.0
    assert fake_lambda.invocations() == []


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ServiceException", 500, UpstreamError),
        ("EC2ThrottledException", 502, UpstreamError),
        ("ResourceConflictException", 409, Unavailable),
        ("InvalidRequestContentException", 400, InvalidRequest),
        ("RequestTooLargeException", 413, InvalidRequest),
    ],
)
def test_service_errors_are_classified(
    code: str,
    status: int,
    expected: type[Exception],
    fake_lambda: FakeLambda,
    make_target: Callable[..., LambdaTarget],
) -> None:
    arn = fake_lambda.add_function("consumer", accept)
    fake_lambda.fail_next(code, status)
    target = make_target(fake_lambda.endpoint, arn)

    failures = target.deliver(deliveries(records_of(["a"])))

    assert type(failures[0]) is expected
    assert failures[0].code == code


def test_a_missing_function_fails_every_record_permanently(
    fake_lambda: FakeLambda, make_target: Callable[..., LambdaTarget]
) -> None:
    target = make_target(
        fake_lambda.endpoint, "arn:aws:lambda:us-east-1:123456789012:function:missing"
    )

    failures = target.deliver(deliveries(records_of(["a", "b", "a"])))

    assert set(failures) == {0, 1, 2}
    assert all(isinstance(f, NotFound) for f in failures.values())
    assert all(isinstance(f, PermanentError) for f in failures.values())


# -- moto ---------------------------------------------------------------------------------------


@pytest.fixture
def moto_simple_lambda(moto_server: str) -> Iterator[str]:
    """moto server with its Docker-less Lambda backend for this test; the server's previous
    Lambda setting is restored afterwards (the setting is server-wide)."""

    def configure(setting: dict[str, Any] | None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{moto_server}/moto-api/config",
            data=None if setting is None else json.dumps(setting).encode(),
            method="GET" if setting is None else "POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    before = configure(None).get("lambda", {"use_docker": True})
    configure({"lambda": {"use_docker": False}})
    try:
        yield moto_server
    finally:
        configure({"lambda": before})


def test_moto_lambda_accepts_the_invocation(
    moto_simple_lambda: str, make_target: Callable[..., LambdaTarget]
) -> None:
    iam = client("iam", endpoint_url=moto_simple_lambda, max_attempts=1)
    lambda_ = client("lambda", endpoint_url=moto_simple_lambda, max_attempts=1)
    role = iam.create_role(RoleName="p13n-target-test", AssumeRolePolicyDocument="{}")["Role"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return event\n")
    function = lambda_.create_function(
        FunctionName="p13n-target-test",
        Runtime="python3.12",
        Role=role["Arn"],
        Handler="index.handler",
        Code={"ZipFile": code.getvalue()},
    )
    try:
        batch = deliveries(records_of(["a", "b"]))
        target = make_target(moto_simple_lambda, function["FunctionArn"])

        assert target.deliver(batch) == {}
    finally:
        lambda_.delete_function(FunctionName="p13n-target-test")
        iam.delete_role(RoleName="p13n-target-test")
        lambda_.close()
        iam.close()
