"""The SageMaker resolver against the fake SageMaker runtime over real sockets."""

from __future__ import annotations

from typing import Any

import pytest

from query.resolvers.remote import MAX_ATTEMPTS
from schemas.errors import Throttled, UpstreamError, UpstreamTimeout
from tests.fixtures.fake_sagemaker import FakeSageMaker
from tests.query.resolver_support import failure, make_resolver, query, resolve

FOR_YOU = "recommend-items"
RERANK = "rerank-items"
ENDPOINT = "picks-model"


def ranked(body: dict[str, Any]) -> dict[str, Any]:
    """A model: rerank-items reversed, else numbered items; echoes what it was asked."""
    if body["action"] == RERANK:
        return {"personalizedRanking": [{"itemId": i} for i in reversed(body["itemList"])]}
    items = [{"itemId": f"m-{n}", "score": 1.0 / n} for n in range(1, 11)]
    return {"itemList": items, "recommendationId": "rec-7", "modelVersion": "v3"}


def endpoint(fake: FakeSageMaker, model: Any = ranked, **extra: Any) -> dict[str, Any]:
    fake.add_endpoint(ENDPOINT, model)
    return {"type": "sagemaker", "endpointName": ENDPOINT, "endpointUrl": fake.endpoint, **extra}


def test_the_documented_payload_goes_as_json(fake_sagemaker: FakeSageMaker) -> None:
    variation = endpoint(fake_sagemaker)
    resolver = make_resolver(FOR_YOU, variation)
    [answer] = resolve(
        resolver,
        query(
            FOR_YOU,
            user_id="u1",
            num_results=3,
            filter="cheap",
            filter_values={"P": "3"},
            context={"DEVICE": "Phone"},
        ),
    )
    [call] = fake_sagemaker.invocations()
    assert (call.endpoint, call.content_type, call.accept) == (
        ENDPOINT,
        "application/json",
        "application/json",
    )
    # The sample project's payload, and p13n's additions after it.
    assert call.body == {
        "version": "1.0",
        "action": FOR_YOU,
        "recommender": {"path": "picks", "config": {"variations": {"v1": variation}}},
        "variation": variation,
        "userId": "u1",
        "numResults": 3,
        "context": {"DEVICE": "Phone"},
        "namespace": "shop",
        "filter": "cheap",
        "filterValues": {"P": "3"},
    }
    assert answer.items == (
        {"itemId": "m-1", "score": 1.0},
        {"itemId": "m-2", "score": 0.5},
        {"itemId": "m-3", "score": 1 / 3},
    )
    assert answer.recommendation_id == "rec-7"
    assert dict(answer.extra) == {"modelVersion": "v3"}  # passed through to the client


def test_rerank_reads_personalized_ranking(fake_sagemaker: FakeSageMaker) -> None:
    resolver = make_resolver(RERANK, endpoint(fake_sagemaker))
    [answer] = resolve(resolver, query(RERANK, user_id="u1", item_ids=("a", "b", "c")))
    assert [i["itemId"] for i in answer.items] == ["c", "b", "a"]
    assert fake_sagemaker.invocations()[0].body["itemList"] == ["a", "b", "c"]


def test_num_results_sent_never_above_500(fake_sagemaker: FakeSageMaker) -> None:
    resolver = make_resolver(FOR_YOU, endpoint(fake_sagemaker))
    resolve(resolver, query(FOR_YOU, user_id="u1", num_results=2000))
    assert fake_sagemaker.invocations()[0].body["numResults"] == 500


@pytest.mark.parametrize(
    "answer",
    [
        {"personalizedRanking": [{"itemId": "a"}]},  # the other action's key
        {"itemList": {"itemId": "a"}},
        {"itemList": [{"id": "a"}]},
        {"itemList": [{"itemId": ""}]},
        {"itemList": ["a"]},
        {"itemList": [], "recommendationId": 7},
        [{"itemId": "a"}],
        b"<html>not json</html>",
        b"\xff\xfe",
    ],
)
def test_an_answer_of_the_wrong_shape_is_502(fake_sagemaker: FakeSageMaker, answer: Any) -> None:
    resolver = make_resolver(FOR_YOU, endpoint(fake_sagemaker, lambda body: answer))
    error = failure(resolver, query(FOR_YOU, user_id="u1"))
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == "BadResponse"


def test_a_failing_model_is_502_model_error(fake_sagemaker: FakeSageMaker) -> None:
    def broken(body: Any) -> Any:
        raise RuntimeError("out of memory")

    error = failure(make_resolver(FOR_YOU, endpoint(fake_sagemaker, broken)), query(FOR_YOU))
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == "ModelError" and "out of memory" in error.message


@pytest.mark.parametrize(
    ("code", "status", "expected", "http"),
    [
        ("ThrottlingException", 400, Throttled, 429),
        ("ServiceUnavailable", 503, UpstreamError, 502),
        ("InternalFailure", 500, UpstreamError, 502),
        ("ValidationError", 400, UpstreamError, 502),
        ("ModelNotReadyException", 429, Throttled, 429),
    ],
)
def test_service_errors_map_to_the_query_path_statuses(
    fake_sagemaker: FakeSageMaker, code: str, status: int, expected: type, http: int
) -> None:
    fake_sagemaker.fail_next(code, status, times=MAX_ATTEMPTS)
    error = failure(make_resolver(FOR_YOU, endpoint(fake_sagemaker)), query(FOR_YOU))
    assert type(error) is expected and error.status == http
    assert error.code == code  # the backend's code is kept


def test_unknown_endpoint_is_502_validation_error(fake_sagemaker: FakeSageMaker) -> None:
    variation = {
        "type": "sagemaker",
        "endpointName": "nope",
        "endpointUrl": fake_sagemaker.endpoint,
    }
    error = failure(make_resolver(FOR_YOU, variation), query(FOR_YOU))
    assert type(error) is UpstreamError and error.code == "ValidationError"
    assert "not found" in error.message


def test_slow_endpoint_is_504(fake_sagemaker: FakeSageMaker) -> None:
    fake_sagemaker.latency = 1.0
    resolver = make_resolver(FOR_YOU, endpoint(fake_sagemaker, timeoutMs=100))
    error = failure(resolver, query(FOR_YOU))
    assert isinstance(error, UpstreamTimeout) and error.status == 504
