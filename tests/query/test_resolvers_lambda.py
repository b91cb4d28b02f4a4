"""The Lambda resolver against the fake Lambda Invoke endpoint over real sockets."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from query.resolvers.remote import MAX_ATTEMPTS
from schemas.errors import Throttled, UpstreamError, UpstreamTimeout
from tests.fixtures.fake_lambda import FakeLambda
from tests.query.resolver_support import failure, make_resolver, query, resolve

RELATED = "related-items"
RERANK = "rerank-items"


def similar(event: dict[str, Any]) -> dict[str, Any]:
    """A function: items named after the seed item, as many as asked."""
    items = [{"itemId": f"{event['itemId']}-{n}"} for n in range(event["numResults"])]
    return {"itemList": items, "recommendationId": "r-1"}


def function(fake: FakeLambda, handler: Any = similar, **extra: Any) -> dict[str, Any]:
    arn = fake.add_function("picks", handler)
    return {"type": "lambda", "arn": arn, "endpointUrl": fake.endpoint, **extra}


def test_invokes_request_response_with_the_documented_event(fake_lambda: FakeLambda) -> None:
    variation = function(fake_lambda) | {"type": "function"}  # the sample project's spelling
    resolver = make_resolver(RELATED, variation)
    [answer] = resolve(resolver, query(RELATED, item_id="sku-1", user_id="u1", num_results=2))
    [call] = fake_lambda.invocations()
    assert (call.function, call.invocation_type) == ("picks", "RequestResponse")
    # The sample project's event: its config objects as in the config document.
    assert call.payload == {
        "version": "1.0",
        "action": RELATED,
        "recommender": {"path": "picks", "config": {"variations": {"v1": variation}}},
        "variation": variation,
        "userId": "u1",
        "itemId": "sku-1",
        "numResults": 2,
        "namespace": "shop",
    }
    assert answer.body("itemList") == {
        "itemList": [{"itemId": "sku-1-0"}, {"itemId": "sku-1-1"}],
        "recommendationId": "r-1",
    }


def test_the_rerank_and_recommend_events_are_the_samples(fake_lambda: FakeLambda) -> None:
    def ranked(event: dict[str, Any]) -> dict[str, Any]:
        return {"personalizedRanking": [{"itemId": i} for i in reversed(event["itemList"])]}

    variation = function(fake_lambda, ranked)
    resolver = make_resolver(RERANK, variation)
    context = {"DEVICE": "Phone"}
    [answer] = resolve(resolver, query(RERANK, user_id="u1", item_ids=("a", "b"), context=context))
    assert [i["itemId"] for i in answer.items] == ["b", "a"]
    [call] = fake_lambda.invocations()
    assert call.payload == {
        "version": "1.0",
        "action": RERANK,
        "recommender": {"path": "picks", "config": {"variations": {"v1": variation}}},
        "variation": variation,
        "userId": "u1",
        "itemList": ["a", "b"],
        "context": context,
        "namespace": "shop",
    }


def test_related_items_without_a_user_sends_an_empty_user(fake_lambda: FakeLambda) -> None:
    resolve(make_resolver(RELATED, function(fake_lambda)), query(RELATED, item_id="a"))
    [call] = fake_lambda.invocations()
    assert call.payload["userId"] == ""  # as the sample sent it


def test_rerank_needs_personalized_ranking(fake_lambda: FakeLambda) -> None:
    answers_a_list = function(fake_lambda, lambda event: {"itemList": [{"itemId": "a"}]})
    resolver = make_resolver(RERANK, answers_a_list)
    error = failure(resolver, query(RERANK, user_id="u1", item_ids=("a", "b")))
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == "BadResponse" and "personalizedRanking" in error.message


def test_a_function_that_raises_is_502_without_its_trace(fake_lambda: FakeLambda) -> None:
    def broken(event: Any) -> Any:
        raise KeyError("secret-table-name")

    error = failure(make_resolver(RELATED, function(fake_lambda, broken)), query(RELATED))
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == "FunctionInvokeError"  # the sample project's code
    assert "KeyError" in error.message and "secret-table-name" not in error.message


def test_a_function_returning_nothing_useful_is_502(fake_lambda: FakeLambda) -> None:
    resolver = make_resolver(RELATED, function(fake_lambda, lambda event: None))
    error = failure(resolver, query(RELATED, item_id="a"))
    assert type(error) is UpstreamError and error.code == "BadResponse"


def test_throttling_is_429_with_retry_after(fake_lambda: FakeLambda) -> None:
    fake_lambda.fail_next("TooManyRequestsException", 429, retry_after=7, times=MAX_ATTEMPTS)
    error = failure(make_resolver(RELATED, function(fake_lambda)), query(RELATED, item_id="a"))
    assert isinstance(error, Throttled) and error.status == 429
    assert error.retry_after == 7.0
    assert fake_lambda.invocations() == []  # both attempts were throttled before running


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ServiceException", 500),
        ("ResourceNotFoundException", 404),
        ("InvalidRequestContentException", 400),
        ("AccessDeniedException", 403),
    ],
)
def test_service_errors_are_502_with_the_code(
    fake_lambda: FakeLambda, code: str, status: int
) -> None:
    fake_lambda.fail_next(code, status, times=MAX_ATTEMPTS)
    error = failure(make_resolver(RELATED, function(fake_lambda)), query(RELATED, item_id="a"))
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == code


def test_slow_function_is_504(fake_lambda: FakeLambda) -> None:
    release = threading.Event()
    try:
        variation = function(fake_lambda, lambda event: release.wait(5), timeoutMs=100)
        error = failure(make_resolver(RELATED, variation), query(RELATED, item_id="a"))
    finally:
        release.set()  # lets the fake's handler threads finish
    assert isinstance(error, UpstreamTimeout) and error.status == 504
    assert len(fake_lambda.invocations()) == MAX_ATTEMPTS  # one retry, then given up
