"""HTTP caching of recommendations: the sample project's ``cacheControl`` headers and ETags, and
an in-process response cache with request coalescing and stale-if-error.

Headers. The rule is ``userSpecified`` when the request names a user, ``syntheticUserSpecified``
when it names one with ``syntheticUser``, ``noUserSpecified`` otherwise (related-items without
``userId``). With a ``maxAge`` the response carries ``Cache-Control: <directives>,max-age=<n>``
(``max-age=<n>`` alone without directives) and an ``ETag`` bound to the URL that embeds its own
expiry as epoch seconds: ``"<url>-<digest>-<expires>"``, where ``<url>`` is a checksum of the
path and the known query parameters (``url_tag``) and ``<digest>`` one of the body. A request
whose ``If-None-Match`` holds such a tag, made for the same URL and not expired yet, gets
``304 Not Modified`` without asking the recommender, as the sample does; a fresh tag of another
URL does not (the sample put the URL's checksum in its tags for this too).
Without a ``maxAge`` there are no caching headers, and ``POST /rerank-items`` is ``no-store``.

In-process cache. Keyed by the caller's path, the normalised known query parameters, the
chosen variation and the auto-context values derived from the request's headers; an entry is fresh for ``maxAge`` seconds and kept ``stale_seconds`` more,
for stale-if-error only. Concurrent misses of one key share a single computation (and its
error). At most ``max_entries`` entries; the least recently used goes first.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from query.base import Query
from schemas.config import CacheControl, CacheRule

NO_STORE = "no-store"


@dataclass(frozen=True)
class Policy:
    """The caching headers of one response."""

    max_age: int | None = None
    directives: str | None = None
    no_store: bool = False

    @classmethod
    def for_query(cls, cache_control: CacheControl, query: Query, *, no_store: bool) -> Policy:
        if no_store:
            return cls(no_store=True)
        rule: CacheRule | None
        if query.user_id is None:
            rule = cache_control.no_user_specified
        elif query.synthetic_user:
            rule = cache_control.synthetic_user_specified
        else:
            rule = cache_control.user_specified
        if rule is None or rule.max_age is None:
            return cls()
        return cls(rule.max_age, rule.directives)

    @property
    def cacheable(self) -> bool:
        return not self.no_store and self.max_age is not None

    def header(self) -> str | None:
        if self.no_store:
            return NO_STORE
        if self.max_age is None:
            return None
        if self.directives:
            return f"{self.directives},max-age={self.max_age}"
        return f"max-age={self.max_age}"


def url_tag(path: str, params_key: str) -> str:
    """The URL part of an ETag: a checksum of the path and the normalised known parameters
    (so parameter order and unknown parameters do not matter, as for the response cache)."""
    return hashlib.blake2b(f"{path}?{params_key}".encode(), digest_size=8).hexdigest()


def make_etag(body: bytes, expires: int, url: str) -> str:
    return f'"{url}-{hashlib.sha256(body).hexdigest()[:20]}-{expires}"'


def still_fresh(if_none_match: str | None, now: float, url: str) -> bool:
    """Whether any ETag the client holds is one of ours, made for this URL (``url_tag``), that
    has not expired."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        parts = tag.strip().removeprefix("W/").strip('"').split("-")
        if len(parts) == 3 and parts[0] == url and parts[2].isdigit() and int(parts[2]) > now:
            return True
    return False


@dataclass(frozen=True)
class Entry:
    """A rendered 200 response and what it was made of."""

    body: bytes
    etag: str | None
    variation: str
    fallback: bool
    created: float  # monotonic
    fresh_until: float  # monotonic
    recommendation_id: str | None = None
    # The body's encodings (gzip), made on first need and kept as long as the entry: a hit
    # is compressed once, not once per request (web.compression).
    encodings: dict[object, bytes] = field(default_factory=dict, compare=False, repr=False)


class ResponseCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        stale_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.stale_seconds = stale_seconds
        self._clock = clock
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[Entry]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def fresh(self, key: Hashable) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.fresh_until:
            if now >= entry.fresh_until + self.stale_seconds:
                del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def stale(self, key: Hashable) -> Entry | None:
        """An expired entry still within its stale window (for stale-if-error)."""
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry.fresh_until + self.stale_seconds:
            return None
        return entry

    def store(self, key: Hashable, entry: Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def coalesce(
        self, key: Hashable, compute: Callable[[], Awaitable[Entry]]
    ) -> tuple[Entry, bool]:
        """``compute()`` once for all concurrent callers of ``key``; True for those who waited
        on another caller's computation. The computation runs as its own task, so a caller
        that goes away (a client disconnecting) does not cancel it for the others."""
        task = self._inflight.get(key)
        waited = task is not None
        if task is None:
            task = asyncio.ensure_future(compute())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task), waited

    def _finished(self, key: Hashable, task: asyncio.Future[Entry]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter that is still there has it raised
