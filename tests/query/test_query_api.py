"""The query path through HTTP, against the service process: parameters and errors, caching,
exposures, coalescing, stale-if-error, fallback, the circuit breaker, and the default config's
whole loop (events in, recommendations change)."""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fixtures.fake_recommender import FakeRecommender
from tests.fixtures.service import Service, wait_until

ServiceFactory = Callable[..., Service]


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"type", "code", "message"}
    assert "Traceback" not in body["message"]
    return body  # type: ignore[no-any-return]


def http_config(
    url: str,
    *,
    cache: dict[str, Any] | None = None,
    timeout_ms: int = 1000,
    fallback: bool = False,
    experiment: bool = False,
) -> dict[str, Any]:
    variations: dict[str, Any] = {
        "remote": {
            "type": "http",
            "url": url + "/recs/{userId}?n={numResults}",
            "timeoutMs": timeout_ms,
        }
    }
    if fallback:
        variations["remote"]["fallback"] = "backup"
        variations["backup"] = {"type": "local", "algorithm": "popularity"}
    recommender: dict[str, Any] = {"variations": variations}
    if experiment:
        recommender["experiments"] = {
            "ab": {
                "method": "local",
                "metrics": {"clicked": {"entityIdKey": "userId", "valueKey": "clicked"}},
            }
        }
    return {
        "version": "t1",
        "cacheControl": cache if cache is not None else {},
        "namespaces": {
            "shop": {
                "recommenders": {"recommend-items": {"recs": recommender}},
                "eventTargets": [{"type": "interactions", "name": "interactions"}],
            }
        },
    }


# -- parameters and errors ---------------------------------------------------------------------


def test_every_bad_parameter_is_a_400_naming_it(service_factory: ServiceFactory) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    with service.client() as client:
        base = "/recommend-items/demo/for-you/u1"
        # (query, named in the message, the sample project's code or one in its style)
        for query, named, code in [
            ("numResults=0", "numResults", "InvalidNumResultsParameter"),
            ("numResults=x", "numResults", "InvalidNumResultsParameter"),
            ("context={oops", "context", "InvalidContextParameter"),
            ('context={"n":1}', "context", "InvalidContextParameter"),
            ("filterValues=[1]", "filterValues", "InvalidFilterParameter"),
            ("feature=nope", "nope", "InvalidExperimentFeature"),
        ]:
            body = error_of(client.get(f"{base}?{query}"), 400)
            assert named in body["message"], (query, body)
            assert (body["type"], body["code"]) == ("Validation", code), (query, body)
        long_user = error_of(client.get("/recommend-items/demo/for-you/" + "u" * 300), 400)
        assert "userId" in long_user["message"]
        assert long_user["code"] == "InvalidUserIdParameter"
        bad_list = error_of(client.get("/rerank-items/demo/ranking/u1/a,,b"), 400)
        assert "itemIds[1]" in bad_list["message"]
        # Above 500 is 500, as the sample capped it; a feature is ignored where nothing is
        # evaluated (no user on related-items, a recommender without experiments).
        capped = client.get(f"{base}?numResults=600")
        assert capped.status_code == 200, capped.text
        assert len(capped.json()["itemList"]) <= 500
        for ignored in ("/related-items/demo/similar/i1?feature=nope",):
            reply = client.get(ignored)
            assert reply.status_code == 200, (ignored, reply.text)


def test_unknown_namespace_recommender_or_action_is_a_404(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    with service.client() as client:
        for path in (
            "/recommend-items/nope/for-you/u1",
            "/recommend-items/demo/nope/u1",
            "/related-items/demo/for-you/i1",  # for-you is a recommend-items recommender
        ):
            body = error_of(client.get(path), 404)
            assert (body["type"], body["code"]) == ("Configuration", "RecommenderNotConfigured")


def test_rerank_post_body_errors_and_no_store(service_factory: ServiceFactory) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    with service.client() as client:
        url = "/rerank-items/demo/ranking/u1"
        ok = client.post(url, json=["b", "a", "b"])
        assert ok.status_code == 200, ok.text
        assert [i["itemId"] for i in ok.json()["personalizedRanking"]] == ["b", "a", "b"]
        assert ok.headers["cache-control"] == "no-store" and "etag" not in ok.headers
        not_json = error_of(
            client.post(url, content=b"[1,", headers={"content-type": "application/json"}), 400
        )
        assert not_json["code"] == "InvalidJSONRequestPayload"  # the sample project's codes
        assert error_of(client.post(url, json={"items": ["a"]}), 400)["code"] == (
            "InvalidRequestPayload"
        )
        for media in ("application/xml", "application/x-www-form-urlencoded"):
            error_of(client.post(url, content=b'["a"]', headers={"content-type": media}), 415)
        for headers in ({"content-type": "text/plain"}, {}):  # read as JSON, as events are
            plain = client.post(url, content=b'["c", "a"]', headers=headers)
            assert plain.status_code == 200, plain.text
            assert [i["itemId"] for i in plain.json()["personalizedRanking"]] == ["c", "a"]
        huge = json.dumps(["x" * 200] * 2000).encode()
        error_of(client.post(url, content=huge, headers={"content-type": "application/json"}), 413)


# -- caching headers, 304 ----------------------------------------------------------------------


def test_cache_headers_by_user_kind_and_304_while_the_etag_is_fresh(
    service_factory: ServiceFactory, fake_recommender: FakeRecommender
) -> None:
    cache = {
        "userSpecified": {"maxAge": 30, "directives": "private"},
        "syntheticUserSpecified": {"maxAge": 300, "directives": "public"},
    }
    service = service_factory(http_config(fake_recommender.url, cache=cache))
    with service.client() as client:
        first = client.get("/recommend-items/shop/recs/u1?numResults=3")
        assert first.status_code == 200, first.text
        assert first.headers["cache-control"] == "private,max-age=30"
        assert first.headers["x-personalization-config-version"] == "t1"
        assert [i["itemId"] for i in first.json()["itemList"]] == ["item-1", "item-2", "item-3"]
        etag = first.headers["etag"]
        calls = fake_recommender.calls
        again = client.get("/recommend-items/shop/recs/u1?numResults=3")
        assert again.headers["x-p13n-cache"] == "hit" and again.content == first.content
        assert fake_recommender.calls == calls  # served from the in-process cache
        not_modified = client.get(
            "/recommend-items/shop/recs/u1?numResults=3", headers={"if-none-match": etag}
        )
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        expired = etag.rsplit("-", 1)[0] + '-1000"'
        fresh = client.get(
            "/recommend-items/shop/recs/u1?numResults=3", headers={"if-none-match": expired}
        )
        assert fresh.status_code == 200
        # The tag is bound to its URL: unknown parameters aside, another URL is answered.
        same = client.get(
            "/recommend-items/shop/recs/u1?utm=x&numResults=3", headers={"if-none-match": etag}
        )
        assert same.status_code == 304
        for other in (
            "/recommend-items/shop/recs/u2?numResults=3",
            "/recommend-items/shop/recs/u1",
        ):
            reply = client.get(other, headers={"if-none-match": etag})
            assert reply.status_code == 200, other
            assert reply.json()["itemList"] and reply.headers["etag"] != etag
        synthetic = client.get("/recommend-items/shop/recs/u2?syntheticUser=true")
        assert synthetic.headers["cache-control"] == "public,max-age=300"


# -- coalescing, stale-if-error, timeouts and errors, fallback, breaker ------------------------


def test_concurrent_identical_misses_make_one_recommender_call(
    service_factory: ServiceFactory, fake_recommender: FakeRecommender
) -> None:
    service = service_factory(http_config(fake_recommender.url, timeout_ms=5000))
    fake_recommender.set(delay=0.5)
    with ThreadPoolExecutor(20) as pool, service.client() as client:
        replies = list(pool.map(lambda _: client.get("/recommend-items/shop/recs/u7"), range(20)))
    assert {r.status_code for r in replies} == {200}
    assert len({r.content for r in replies}) == 1
    assert fake_recommender.calls == 1
    outcomes = sorted(r.headers["x-p13n-cache"] for r in replies)
    assert outcomes.count("miss") == 1 and outcomes.count("coalesced") == 19


def test_stale_entry_served_when_the_recommender_fails(
    service_factory: ServiceFactory, fake_recommender: FakeRecommender
) -> None:
    cache = {"userSpecified": {"maxAge": 1}}
    service = service_factory(http_config(fake_recommender.url, cache=cache))
    with service.client() as client:
        good = client.get("/recommend-items/shop/recs/u1")
        assert good.status_code == 200
        fake_recommender.set(status=500)

        def stale() -> bool:
            reply = client.get("/recommend-items/shop/recs/u1")
            assert reply.status_code == 200, reply.text
            return reply.headers["x-p13n-cache"] == "stale"

        wait_until(stale, timeout=10, what="a stale answer once the entry expires")
        reply = client.get("/recommend-items/shop/recs/u1")
        assert reply.headers["warning"].startswith("110")
        assert reply.content == good.content
        # Another user has no entry to fall back on: the recommender's error, as JSON.
        assert error_of(client.get("/recommend-items/shop/recs/u2"), 502)["code"]


@pytest.mark.parametrize(
    "behaviour,status",
    [
        ({"status": 500}, 502),
        ({"status": 429, "retry_after": "3"}, 429),
        ({"delay": 1.0}, 504),
        ({"body": b'{"items": []}'}, 502),
        ({"body": b"not json"}, 502),
    ],
)
def test_recommender_failures_map_to_gateway_errors(
    service_factory: ServiceFactory,
    fake_recommender: FakeRecommender,
    behaviour: dict[str, Any],
    status: int,
) -> None:
    service = service_factory(http_config(fake_recommender.url, timeout_ms=300))
    fake_recommender.set(**behaviour)
    with service.client() as client:
        reply = client.get("/recommend-items/shop/recs/u1")
        # The backend's failure is typed by the backend, as the sample typed Personalize's.
        assert error_of(reply, status)["type"] == "Http"
        if status == 429:
            assert int(reply.headers["retry-after"]) >= 1


def test_fallback_serves_and_the_breaker_stops_calling_a_failing_variation(
    service_factory: ServiceFactory, fake_recommender: FakeRecommender
) -> None:
    service = service_factory(http_config(fake_recommender.url, fallback=True))
    fake_recommender.set(status=503)
    with service.client() as client:
        for n in range(12):
            reply = client.get(f"/recommend-items/shop/recs/user-{n}")
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-p13n-fallback"] == "true"
            assert "itemList" in reply.json()
        # Five failures open the breaker; later requests go straight to the fallback.
        assert fake_recommender.calls == 5
        metrics = client.get("/metrics").text
        assert 'p13n_query_fallbacks_total{reason="open"}' in metrics
        assert 'p13n_query_fallbacks_total{reason="failed"} 5.0' in metrics


# -- exposures and the experiments report ------------------------------------------------------


def test_exposures_are_written_for_experiment_choices(
    service_factory: ServiceFactory, fake_recommender: FakeRecommender
) -> None:
    config = http_config(fake_recommender.url, fallback=True, experiment=True)
    service = service_factory(config, extra_args=("--no-consumers",))
    chosen = {}
    with service.client() as client:
        for n in range(20):
            reply = client.get(f"/recommend-items/shop/recs/user-{n}")
            assert reply.status_code == 200, reply.text
            matched = reply.json()["matchedExperiment"]
            assert matched["feature"] == "ab"
            # The sample's keys beside p13n's.
            assert (matched["type"], matched["method"]) == ("local", "local")
            assert matched["details"] == {"experiment": "ab", "treatment": matched["variation"]}
            chosen[f"user-{n}"] = (matched["variation"], reply.json().get("recommendationId"))
    assert {v for v, _ in chosen.values()} == {"remote", "backup"}

    def exposures() -> list[dict[str, Any]]:
        return [line["record"] for line in service.tail() if line["kind"] == "exposure"]

    wait_until(lambda: len(exposures()) == 20, what="20 exposure records")
    for record in exposures():
        assert (record["variation"], record["recommendationId"]) == chosen[record["userId"]]
        assert (record["namespace"], record["recommender"], record["feature"]) == (
            "shop",
            "recs",
            "ab",
        )


# -- the built-in default config, end to end ---------------------------------------------------


def test_default_config_recommendations_react_to_events(service_factory: ServiceFactory) -> None:
    service = service_factory()
    with service.client() as client:
        empty = client.get("/recommend-items/demo/for-you/alice")
        assert empty.status_code == 200 and empty.json()["itemList"] == []

        def post(user: str, session: str, items: list[str]) -> None:
            events = [{"eventType": "View", "itemId": item} for item in items]
            body = {"userId": user, "sessionId": session, "eventList": events}
            assert client.post("/events/demo", json=body).status_code == 202

        # Bob and Carol view "kettle" with "teapot" in their sessions; "kettle" is the hit.
        for n in range(6):
            post(f"user-{n}", f"s-{n}", ["kettle", "teapot", "kettle"])
        post("bob", "s-bob", ["mug"])

        polls = itertools.count(10)

        def related() -> list[str]:
            # Answers are cached for a while (the default noUserSpecified maxAge): every poll
            # asks a different numResults, so each one is a fresh question.
            url = f"/related-items/demo/similar/kettle?decorateItems=no&numResults={next(polls)}"
            return [item["itemId"] for item in client.get(url).json()["itemList"]]

        wait_until(lambda: related()[:1] == ["teapot"], what="teapot related to kettle")
        # Sessions land on different shards, read independently: the co-occurrence above can
        # show before every user's own history is stored, so wait for all 19 events.
        store = service.data_dir / "interactions.db"

        def stored() -> int:
            with contextlib.closing(sqlite3.connect(store)) as conn:
                return int(conn.execute("SELECT count(*) FROM interactions").fetchone()[0])

        wait_until(lambda: stored() == 19, what="every event stored")
        for_alice = client.get("/recommend-items/demo/for-you/alice?numResults=2").json()
        assert for_alice["itemList"][0]["itemId"] == "kettle"
        assert for_alice["matchedExperiment"]["feature"] == "for-you-ranking"
        seen = client.get("/recommend-items/demo/for-you/user-0").json()["itemList"]
        assert "kettle" not in [i["itemId"] for i in seen]  # never recommend what they had
        ranked = client.get("/rerank-items/demo/ranking/bob/kettle,mug,unknown").json()
        assert [i["itemId"] for i in ranked["personalizedRanking"]][-1] == "unknown"

        # Item metadata loaded with `p13n items load` decorates the answers.
        catalog = service.data_dir.parent / "items.jsonl"
        catalog.write_text(
            "\n".join(
                json.dumps({"itemId": item, "category": "tea"}) for item in ("kettle", "teapot")
            )
        )
        loaded = service.cli("items", "load", str(catalog), "--namespace", "demo")
        assert loaded.returncode == 0, loaded.stderr
        decorated = client.get("/related-items/demo/similar/kettle").json()["itemList"]
        assert decorated[0]["metadata"] == {"category": "tea"}
        plain = client.get("/related-items/demo/similar/kettle?decorateItems=false").json()
        assert "metadata" not in plain["itemList"][0]


def test_answers_cached_per_auto_context_value(service_factory: ServiceFactory) -> None:
    # The built-in config derives deviceType from CloudFront headers: a phone and a desktop
    # asking the same URL must not share one cached answer.
    service = service_factory(extra_args=("--no-consumers",))
    phone = {"cloudfront-is-mobile-viewer": "true"}
    with service.client() as client:
        url = "/related-items/demo/similar/i1"
        assert client.get(url).headers["x-p13n-cache"] == "miss"
        assert client.get(url).headers["x-p13n-cache"] == "hit"
        assert client.get(url, headers=phone).headers["x-p13n-cache"] == "miss"
        assert client.get(url, headers=phone).headers["x-p13n-cache"] == "hit"
