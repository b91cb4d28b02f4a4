"""Functions written for the sample project work unchanged: a custom recommender and a response
post-processor, each written here to the contract of the sample's
``samples/lambdas/custom_recommender_lambda.py`` and ``response_post_process.py`` (the event they
receive, the answer they return), run behind the fake Lambda endpoint and reached through the
service process over real sockets. The config is the sample's too: ``function/NAME`` ARNs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.fixtures.fake_lambda import ACCOUNT, REGION, FakeLambda
from tests.fixtures.service import Service

SLASHED = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function/"  # the sample schema's spelling


def custom_recommender(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    """A recommender as the sample's clients wrote them: it reads the sample's event keys and
    answers ``itemList`` (or ``personalizedRanking`` for rerank-items)."""
    assert event["version"] == "1.0"
    if event["action"] == "rerank-items":
        ranked = sorted(event["itemList"], reverse=True)
        return {"personalizedRanking": [{"itemId": item} for item in ranked]}
    seed = event.get("itemId") or event["userId"]
    # Keys of the variation's own config and of the recommender.
    tag = event["variation"]["arn"].rsplit(":", 1)[1] + "@" + event["recommender"]["path"]
    count = event.get("numResults", 10)
    items = [{"itemId": f"{seed}-{tag}-{n + 1}"} for n in range(count)]
    return {"itemList": items, "recommendationId": event["recommender"]["path"]}


def post_processor(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    """A response post-processor to the sample's contract: ``response`` in, response out; it
    reads the recommender's config as the sample handed it over."""
    response = event["response"]
    settings = event["recommender"]["config"]["responsePostProcessor"]
    keep = int(settings["lookAheadMultiplier"])  # here: the page size this business wants
    return {**response, "itemList": response["itemList"][:keep], "postProcessed": True}


def lambda_variation() -> dict[str, Any]:
    return {"variations": {"custom": {"type": "function", "arn": SLASHED + "custom"}}}


def test_functions_written_for_the_sample_work_unchanged(
    service_factory: Callable[..., Service], fake_lambda: FakeLambda
) -> None:
    fake_lambda.add_function("custom", lambda event: custom_recommender(event, None))
    fake_lambda.add_function("trim", lambda event: post_processor(event, None))
    with_post = lambda_variation() | {
        "responsePostProcessor": {
            "type": "lambda",
            "arn": SLASHED + "trim",
            "lookAheadMultiplier": 2,
        }
    }
    config = {
        "namespaces": {
            "shop": {
                "recommenders": {
                    "recommend-items": {"for-you": lambda_variation(), "trimmed": with_post},
                    "related-items": {"similar": lambda_variation()},
                    "rerank-items": {"ranking": lambda_variation()},
                },
                "eventTargets": [{"type": "interactions"}],
            }
        }
    }
    service = service_factory(
        config,
        extra_args=("--no-consumers",),
        env={"AWS_ENDPOINT_URL_LAMBDA": fake_lambda.endpoint},
    )
    with service.client() as client:
        recs = client.get("/recommend-items/shop/for-you/u1?numResults=3")
        related = client.get("/related-items/shop/similar/sku-9?numResults=2")
        rerank_get = client.get("/rerank-items/shop/ranking/u1/a,c,b")
        rerank_post = client.post("/rerank-items/shop/ranking/u1", json=["x", "z", "y"])
        trimmed = client.get("/recommend-items/shop/trimmed/u2?numResults=5")
    for reply in (recs, related, rerank_get, rerank_post, trimmed):
        assert reply.status_code == 200, reply.text
    assert recs.json() == {
        "itemList": [{"itemId": f"u1-custom@for-you-{n}"} for n in (1, 2, 3)],
        "recommendationId": "for-you",
    }
    assert [i["itemId"] for i in related.json()["itemList"]] == [
        "sku-9-custom@similar-1",
        "sku-9-custom@similar-2",
    ]
    assert [i["itemId"] for i in rerank_get.json()["personalizedRanking"]] == ["c", "b", "a"]
    assert [i["itemId"] for i in rerank_post.json()["personalizedRanking"]] == ["z", "y", "x"]
    # Asked for 5 with look-ahead x2 (10 from the recommender), trimmed to 2 by the function.
    assert trimmed.json()["itemList"] == [
        {"itemId": "u2-custom@trimmed-1"},
        {"itemId": "u2-custom@trimmed-2"},
    ]
    assert trimmed.json()["postProcessed"] is True
    # Every call went to the function named by the slashed ARN, read as Lambda names it.
    called = {call.function for call in fake_lambda.invocations()}
    assert called == {"custom", "trim"}
