"""``responsePostProcessor`` through the service: look-ahead, the function's rewrite, failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fixtures.fake_lambda import FakeLambda
from tests.fixtures.fake_recommender import FakeRecommender
from tests.fixtures.service import Service


def only_even(event: dict[str, Any]) -> dict[str, Any]:
    """Keeps items with an even number, as a business rule that drops some would."""
    items = event["response"]["itemList"]
    kept = [item for item in items if int(item["itemId"].split("-")[1]) % 2 == 0]
    return {**event["response"], "itemList": kept, "postProcessed": True}


def config(recommender_url: str, arn: str) -> dict[str, Any]:
    return {
        "namespaces": {
            "shop": {
                "recommenders": {
                    "recommend-items": {
                        "recs": {
                            "responsePostProcessor": {
                                "type": "lambda",
                                "arn": arn,
                                "lookAheadMultiplier": 3,
                                "lookAheadMaximumValue": 40,
                            },
                            "variations": {
                                "remote": {
                                    "type": "http",
                                    "url": recommender_url + "/recs/{userId}?n={numResults}",
                                }
                            },
                        }
                    }
                },
                "eventTargets": [{"type": "interactions"}],
            }
        }
    }


def test_look_ahead_feeds_the_function_and_the_answer_is_truncated(
    service_factory: Callable[..., Service],
    fake_lambda: FakeLambda,
    fake_recommender: FakeRecommender,
) -> None:
    arn = fake_lambda.add_function("keep-even", only_even)
    service = service_factory(
        config(fake_recommender.url, arn),
        extra_args=("--no-consumers",),
        env={"AWS_ENDPOINT_URL_LAMBDA": fake_lambda.endpoint},
    )
    with service.client() as client:
        reply = client.get("/recommend-items/shop/recs/u1?numResults=5")
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert [i["itemId"] for i in body["itemList"]] == [f"item-{n}" for n in (2, 4, 6, 8, 10)]
        assert body["postProcessed"] is True and body["recommendationId"] == "rid-1"
        # Asked for 5, the recommender was asked for 5 x 3; then capped by the maximum of 40.
        asked = parse_qs(urlsplit(fake_recommender.paths[0]).query)["n"]
        assert asked == ["15"]
        client.get("/recommend-items/shop/recs/u2?numResults=20")
        assert parse_qs(urlsplit(fake_recommender.paths[1]).query)["n"] == ["40"]
    event = fake_lambda.invocations()[0].payload
    # The sample project's event (its config objects as in the config document).
    recs = config(fake_recommender.url, arn)["namespaces"]["shop"]["recommenders"]
    rec_config = recs["recommend-items"]["recs"]
    assert event["version"] == "1.0" and event["action"] == "recommend-items"
    assert event["recommender"] == {"path": "recs", "config": rec_config}
    assert event["variation"] == rec_config["variations"]["remote"]
    assert (event["namespace"], event["userId"]) == ("shop", "u1")
    assert event["numResults"] == 5 and len(event["response"]["itemList"]) == 15


def test_a_failing_function_is_a_502_with_no_internals(
    service_factory: Callable[..., Service],
    fake_lambda: FakeLambda,
    fake_recommender: FakeRecommender,
) -> None:
    def broken(event: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("secret internal detail")

    arn = fake_lambda.add_function("broken", broken)
    bad_shape = fake_lambda.add_function("bad-shape", lambda event: {"items": []})
    for function in (arn, bad_shape):
        service = service_factory(
            config(fake_recommender.url, function),
            extra_args=("--no-consumers",),
            env={"AWS_ENDPOINT_URL_LAMBDA": fake_lambda.endpoint},
        )
        with service.client() as client:
            reply = client.get("/recommend-items/shop/recs/u1")
            assert reply.status_code == 502, reply.text
            assert set(reply.json()) == {"type", "code", "message"}
            assert "secret" not in reply.text
        service.stop()
