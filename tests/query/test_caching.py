"""Cache headers by the sample project's rules, ETag expiry, and the response cache."""

from __future__ import annotations

import asyncio

import pytest

from query.base import Query
from query.caching import Entry, Policy, ResponseCache, make_etag, still_fresh, url_tag
from schemas.config import CacheControl

RULES = CacheControl.from_config(
    {
        "userSpecified": {"maxAge": 10, "directives": "private"},
        "syntheticUserSpecified": {"maxAge": 300},
        "noUserSpecified": {"maxAge": 1200, "directives": "public,stale-while-revalidate=60"},
    }
)


@pytest.mark.parametrize(
    "query,header",
    [
        (Query("recommend-items", "n", "r", user_id="u"), "private,max-age=10"),
        (Query("recommend-items", "n", "r", user_id="u", synthetic_user=True), "max-age=300"),
        (
            Query("related-items", "n", "r", item_id="i"),
            "public,stale-while-revalidate=60,max-age=1200",
        ),
    ],
)
def test_rule_by_user_kind(query: Query, header: str) -> None:
    policy = Policy.for_query(RULES, query, no_store=False)
    assert policy.cacheable and policy.header() == header


def test_post_is_no_store_and_no_rule_means_no_headers() -> None:
    query = Query("rerank-items", "n", "r", user_id="u", item_ids=("a",))
    assert Policy.for_query(RULES, query, no_store=True).header() == "no-store"
    assert not Policy.for_query(RULES, query, no_store=True).cacheable
    bare = Policy.for_query(CacheControl(), query, no_store=False)
    assert bare.header() is None and not bare.cacheable


def test_etag_freshness_is_its_embedded_expiry() -> None:
    url = url_tag("/recommend-items/ns/rec/u1", "numResults=5")
    tag = make_etag(b"body", 1_000, url)
    assert still_fresh(tag, 999.0, url)
    assert not still_fresh(tag, 1000.0, url)
    assert still_fresh(f'W/"other-5", {tag}', 10.0, url)
    assert not still_fresh('"not-ours"', 0.0, url)
    assert not still_fresh(None, 0.0, url)
    assert make_etag(b"body", 1_000, url) != make_etag(b"other", 1_000, url)
    # Bound to its URL: a fresh tag of another URL (path or parameters) is not ours here.
    for other in (
        url_tag("/recommend-items/ns/rec/u2", "numResults=5"),
        url_tag("/recommend-items/ns/rec/u1", "numResults=6"),
    ):
        assert other != url
        assert not still_fresh(tag, 999.0, other)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(fresh_for: float, at: float = 0.0, name: str = "v") -> Entry:
    return Entry(b"{}", None, name, False, at, at + fresh_for)


def test_fresh_then_stale_window_then_gone() -> None:
    clock = Clock()
    cache = ResponseCache(stale_seconds=100, clock=clock)
    cache.store("k", entry(10))
    assert cache.fresh("k") is not None
    clock.now = 10
    assert cache.fresh("k") is None and cache.stale("k") is not None
    clock.now = 110
    assert cache.stale("k") is None
    assert cache.fresh("k") is None and len(cache) == 0


def test_least_recently_used_goes_first() -> None:
    cache = ResponseCache(max_entries=2, clock=Clock())
    cache.store("a", entry(10))
    cache.store("b", entry(10))
    assert cache.fresh("a") is not None  # a is now the most recent
    cache.store("c", entry(10))
    assert cache.fresh("b") is None and cache.fresh("a") and cache.fresh("c")


def test_concurrent_misses_share_one_computation_and_its_error() -> None:
    cache = ResponseCache()
    calls = 0

    async def main() -> None:
        nonlocal calls
        gate = asyncio.Event()

        async def compute() -> Entry:
            nonlocal calls
            calls += 1
            await gate.wait()
            return entry(1)

        waiters = [asyncio.create_task(cache.coalesce("k", compute)) for _ in range(20)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*waiters)
        assert sum(waited for _, waited in results) == 19
        assert len({id(e) for e, _ in results}) == 1

        async def broken() -> Entry:
            await asyncio.sleep(0)
            raise RuntimeError("backend down")

        failures = await asyncio.gather(
            *(cache.coalesce("x", broken) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(f, RuntimeError) for f in failures)

    asyncio.run(main())
    assert calls == 1


def test_a_caller_going_away_does_not_cancel_the_shared_computation() -> None:
    cache = ResponseCache()

    async def main() -> None:
        gate = asyncio.Event()

        async def compute() -> Entry:
            await gate.wait()
            return entry(1, name="done")

        leader = asyncio.create_task(cache.coalesce("k", compute))
        await asyncio.sleep(0)
        follower = asyncio.create_task(cache.coalesce("k", compute))
        await asyncio.sleep(0)
        leader.cancel()
        gate.set()
        result, waited = await follower
        assert result.variation == "done" and waited

    asyncio.run(main())
