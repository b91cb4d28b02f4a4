"""A GET's plan (recommender, validated query, chosen variation, caching policy) is remembered
by path and query string, but each request's own headers still reach the recommender on a
miss: auto-context, filters and payloads are per request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import query.backends as backends_module
from query.base import Query, Recommendations
from query.service import QueryService, Request
from schemas.config import default_document
from schemas.errors import InvalidRequest
from schemas.sources import BuiltinSource, ConfigHolder, FileSource


class Recording:
    name = "recording"

    def __init__(self, asked: list[Query]) -> None:
        self.asked = asked

    async def resolve(self, query: Query) -> Recommendations:
        self.asked.append(query)
        return Recommendations(({"itemId": "i1"},), recommendation_id=f"r{len(self.asked)}")

    async def close(self) -> None:
        pass


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[Query]:
    queries: list[Query] = []
    monkeypatch.setattr(backends_module, "build_resolver", lambda *_: Recording(queries))
    return queries


def request(headers: dict[str, str], query_string: bytes = b"numResults=5") -> Request:
    return Request(
        action="recommend-items",
        namespace="demo",
        recommender="for-you",
        path=MappingProxyType({"namespace": "demo", "recommender": "for-you", "userId": "u1"}),
        params=MappingProxyType(
            dict(p.split("=", 1) for p in query_string.decode().split("&") if p)
        ),
        headers=headers,
        url_path="/recommend-items/demo/for-you/u1",
        query_string=query_string,
    )


def serve(service: QueryService, *requests: Request) -> list[Any]:
    async def run() -> list[Any]:
        return [await service.serve(r) for r in requests]

    return asyncio.run(run())


def test_a_remembered_plan_still_asks_with_each_requests_own_headers(
    tmp_path: Path, asked: list[Query]
) -> None:
    holder = ConfigHolder(BuiltinSource(), adjust=lambda c: c.with_data_dir(str(tmp_path)))
    service = QueryService(holder)
    desktop = {"user-agent": "desk"}
    phone = {"user-agent": "phone", "cloudfront-is-mobile-viewer": "true"}
    answers = serve(service, request(desktop), request(phone), request(phone))
    assert [a.headers["x-p13n-cache"] for a in answers] == ["miss", "miss", "hit"]
    assert [q.headers for q in asked] == [desktop, phone]
    assert [q.context.get("deviceType") for q in asked] == ["Desktop", "Phone"]
    assert len(service._current().plans) == 1  # one plan served all three


def test_a_request_that_fails_validation_leaves_no_plan(tmp_path: Path, asked: list[Query]) -> None:
    holder = ConfigHolder(BuiltinSource(), adjust=lambda c: c.with_data_dir(str(tmp_path)))
    service = QueryService(holder)
    for _ in range(2):  # and fails again the second time
        with pytest.raises(InvalidRequest):
            serve(service, request({}, b"numResults=0"))
    assert service._current().plans == {}
    assert asked == []


def test_uncached_answers_leave_no_plan(tmp_path: Path, asked: list[Query]) -> None:
    """Without a maxAge every request is computed anyway: no plan is kept for it."""
    document = default_document()
    for by_name in document["namespaces"]["demo"]["recommenders"].values():
        for rec in by_name.values():
            rec["cacheControl"] = {}
    document["namespaces"]["demo"].pop("cacheControl", None)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(document))
    holder = ConfigHolder(
        FileSource(str(config_file)), adjust=lambda c: c.with_data_dir(str(tmp_path))
    )
    service = QueryService(holder)
    answers = serve(service, request({}), request({}))
    assert [a.headers["x-p13n-cache"] for a in answers] == ["miss", "miss"]
    assert len(asked) == 2
    assert service._current().plans == {}
