"""What the HTTP layer hands the query path (``Request``) and gets back (``Answer``): plain
values, no framework objects; and the caching headers of an answer."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from query.caching import Entry, Policy

STALE_WARNING = '110 - "Response is Stale"'


@dataclass(frozen=True)
class Request:
    """What the HTTP layer hands over: plain values, no framework objects."""

    action: str
    namespace: str
    recommender: str
    path: Mapping[str, str]
    params: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    url_path: str
    body: bytes | None = None
    # The raw query string, when the caller has it: repeated GETs then reuse their plan.
    query_string: bytes | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The memo of the body's encodings when the body is a cache entry's (``Entry.encodings``).
    encodings: dict[object, bytes] | None = None


def cache_headers(policy: Policy, etag: str | None) -> dict[str, str]:
    """``cache-control`` by the policy, and the ``etag`` when there is one."""
    headers: dict[str, str] = {}
    value = policy.header()
    if value is not None:
        headers["cache-control"] = value
    if etag is not None:
        headers["etag"] = etag
    return headers


def answer_headers(policy: Policy, entry: Entry, outcome: str) -> dict[str, str]:
    """The headers of a 200 serving ``entry``, ``outcome`` being its cache outcome."""
    headers = cache_headers(policy, entry.etag)
    headers["content-type"] = "application/json"
    headers["x-p13n-cache"] = outcome
    if outcome in ("hit", "stale"):
        headers["age"] = str(int(time.monotonic() - entry.created))
    if outcome == "stale":
        headers["warning"] = STALE_WARNING
    if entry.fallback:
        headers["x-p13n-fallback"] = "true"
    return headers
