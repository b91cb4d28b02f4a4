"""What the remote resolvers share: the request they send, the answer they accept, and how a
backend's failure becomes a query-path error.

The payload (the JSON body of a Lambda or SageMaker call; ``payload``) is the sample project's,
so a function or model written for the sample works unchanged::

    {"version": "1.0",
     "action": "recommend-items" | "related-items" | "rerank-items",
     "recommender": {"path": <recommender name>, "config": <its config object>},
     "variation": <the variation's config object>,
     "userId": str,            # related-items: "" without a user
     "itemId": str,            # related-items only
     "numResults": int,        # recommend-items and related-items, at most 500
     "itemList": [str, ...],   # rerank-items only: the item ids to rerank
     "context": {str: str},    # only when the request has context
     "namespace": str,         # p13n's additions, which a sample function ignores
     "filter": str, "filterValues": {str: str}}   # only when given

Config objects are as in the config document, with inherited keys (``autoContext``,
``filters``, ``cacheControl``, ``inferenceItemMetadata``) filled in, as the sample sent them.

The answer (``recommendations``): a JSON object whose action key (``itemList`` for
recommend-items and related-items, ``personalizedRanking`` for rerank-items) holds a list of
objects, each with a non-empty string ``itemId``; an optional string ``recommendationId``. Other
top-level keys are passed through to the client. Items beyond ``numResults`` are dropped.
Anything else is ``UpstreamError`` (502, code ``BadResponse``).

Failures (``boto_error``): throttling stays ``Throttled`` (429, ``Retry-After`` kept), a
timeout is ``UpstreamTimeout`` (504) and everything else, a backend's own ``ValidationError``
included, is ``UpstreamError`` (502) with the backend's error code kept: the caller's request was
valid, the backend failed to answer it. The error keeps the backend's HTTP status
(``backend_status``; for SageMaker's ``ModelError`` the model's own, ``OriginalStatusCode``), so
the circuit breaker can tell a backend refusing one request (4xx) from a backend failing
(``query.breaker.is_backend_failure``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec
from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

from aws.clients import client
from aws.errors import translate
from query.base import MAX_RESULTS, Query, Recommendations
from schemas.config import Variation, thawed
from schemas.errors import (
    P13nError,
    Throttled,
    UpstreamError,
    UpstreamTimeout,
    retry_after_seconds,
)

if TYPE_CHECKING:
    from query.resolvers import ResolverContext

# One retry at most: the service bounds the whole call by the variation's timeout anyway, and
# adaptive mode slows this client down by itself once the backend throttles it.
MAX_ATTEMPTS = 2
CONNECT_TIMEOUT_S = 2.0
BAD_RESPONSE = "BadResponse"
PAYLOAD_VERSION = "1.0"
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True)
class Documents:
    """The config objects a payload carries, thawed once when the resolver is built."""

    recommender: Mapping[str, Any]
    variation: Mapping[str, Any]

    @classmethod
    def of(cls, variation: Variation, context: ResolverContext) -> Documents:
        return cls(thawed(context.recommender.document), thawed(variation.document))


def payload(query: Query, documents: Documents) -> dict[str, Any]:
    """The documented request body for ``query`` (see the module docstring)."""
    body: dict[str, Any] = {
        "version": PAYLOAD_VERSION,
        "action": query.action,
        "recommender": {"path": query.recommender, "config": documents.recommender},
        "variation": documents.variation,
        "userId": query.user_id or "",
    }
    if query.action == "rerank-items":
        body["itemList"] = list(query.item_ids)
    else:
        if query.action == "related-items":
            body["itemId"] = query.item_id
        body["numResults"] = min(query.num_results, MAX_RESULTS)
    if query.context:
        body["context"] = dict(query.context)
    body["namespace"] = query.namespace
    if query.filter is not None:
        body["filter"] = query.filter
    if query.filter_values:
        body["filterValues"] = dict(query.filter_values)
    return body


def recommendations(document: Any, query: Query, what: str) -> Recommendations:
    """The answer in ``document`` (parsed JSON), or ``UpstreamError`` if it has the wrong shape."""
    if not isinstance(document, dict):
        raise bad_response(what, f"expected a JSON object, got {type(document).__name__}")
    items = document.get(query.shape)
    if not isinstance(items, list):
        raise bad_response(what, f"no '{query.shape}' list in the answer")
    for position, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("itemId"), str)
            or not item["itemId"]
        ):
            raise bad_response(what, f"{query.shape}[{position}] has no string itemId")
    recommendation_id = document.get("recommendationId")
    if recommendation_id is not None and not isinstance(recommendation_id, str):
        raise bad_response(what, "recommendationId is not a string")
    extra = {k: v for k, v in document.items() if k not in (query.shape, "recommendationId")}
    return Recommendations(
        items=tuple(items[: max(query.num_results, 0)]),
        recommendation_id=recommendation_id,
        extra=MappingProxyType(extra),
    )


def parse(raw: bytes, query: Query, what: str) -> Recommendations:
    """``recommendations`` for a JSON body given as bytes."""
    try:
        document = _decode(raw)  # msgspec: a fifth of json.loads' time for 25 items
    except msgspec.DecodeError as exc:
        raise bad_response(what, "the answer is not JSON") from exc
    return recommendations(document, query, what)


def bad_response(what: str, reason: str) -> UpstreamError:
    return UpstreamError(f"{what}: {reason}", code=BAD_RESPONSE)


def as_upstream(error: P13nError, backend_status: int | None = None) -> P13nError:
    """A backend failure as the query path reports it: 429, 504, or else 502 with the code kept
    (and the status the backend answered with, if known)."""
    if isinstance(error, Throttled | UpstreamTimeout | UpstreamError):
        return error
    return UpstreamError(
        error.message, code=error.code, retry_after=error.retry_after, backend_status=backend_status
    )


def boto_error(exc: Exception, what: str) -> P13nError:
    """The query-path error for what boto raised while doing ``what``."""
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return UpstreamTimeout(f"{what}: {exc}", code="Timeout")
    error = translate(exc, what)
    status = None
    if isinstance(exc, ClientError):
        metadata = exc.response.get("ResponseMetadata", {})
        if error.retry_after is None:
            headers = metadata.get("HTTPHeaders", {})
            error.retry_after = retry_after_seconds(headers.get("retry-after"))
        if exc.response.get("Error", {}).get("Code") == "ModelError":
            # 424 says only "the model failed"; the model's own answer says how.
            status = _status(exc.response.get("OriginalStatusCode"))
        else:
            status = _status(metadata.get("HTTPStatusCode"))
    return as_upstream(error, status)


def _status(value: Any) -> int | None:
    """An HTTP status from an error answer's field (botocore parses them as int; be lenient)."""
    try:
        status = int(value)
    except (TypeError, ValueError):
        return None
    return status if 100 <= status <= 599 else None


class LazyClient:
    """A boto3 client built on first use, in the worker thread that needs it (building one
    takes a few hundred milliseconds and may read files, so never at import or config load).
    Thread-safe: concurrent first calls build one client."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def aws_client(
    service: str, *, region: str | None, endpoint_url: str | None, timeout_ms: int
) -> LazyClient:
    """A lazily built client for a query-path call: read timeout = the variation's timeout,
    adaptive retries (client-side rate limiting once throttled), at most one retry."""
    timeout_s = timeout_ms / 1000.0

    def build() -> Any:
        return client(
            service,
            region=region,
            endpoint_url=endpoint_url,
            max_attempts=MAX_ATTEMPTS,
            connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s),
            read_timeout=timeout_s,
            retry_mode="adaptive",
        )

    return LazyClient(build)
