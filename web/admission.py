"""Admission: what is answered before the router, in this order — header limits (431), a CORS
preflight (``web.cors``), the API key and its rate limit (401/403/429) unless the path is
public — and the config version stamped on every answer.

One layer for these checks because their order is the contract: a preflight carries no key, so
it is answered before keys are checked, but only after the header limits. The config version
comes from the same config object as the checks, read once per request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.config import ApiKey, AuthConfig, Config, RateLimit
from streams.pacing import TokenBucket
from web.cors import CorsPolicy
from web.docs import PUBLIC_PATHS as DOCS_PATHS
from web.errors import ERROR_CODE_KEY, error_response

# Health probes carry no key; the API docs are public, as FastAPI's are (see web.docs).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"}) | DOCS_PATHS
VERSION_HEADER = b"x-personalization-config-version"


class Admission:
    def __init__(self, app: ASGIApp, config: Callable[[], Config], cors: CorsPolicy) -> None:
        self.app = app
        self.config = config
        self.cors = cors
        self.keys = ApiKeys()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        config = self.config()
        if config.version is not None:
            send = _stamped(send, (VERSION_HEADER, config.version.encode("latin-1", "replace")))
        refusal = _limit_headers(scope)
        if refusal is None and scope["method"] == "OPTIONS":
            refusal = self._preflight(scope, config)
        if refusal is None:
            refusal = self.keys.check(scope, config.auth)
        if refusal is not None:
            return refusal(scope, receive, send)
        return self.app(scope, receive, send)

    def _preflight(self, scope: Scope, config: Config) -> Response | None:
        """The answer to a CORS preflight (before API keys: preflights carry none), or None
        when the request is not one."""
        origin: bytes | None = None
        asks = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                asks = True
        cors = self.cors.of(config)
        if origin is None or not asks or not cors.enabled or not cors.applies(scope["path"]):
            return None
        return cors.preflight(scope, origin)


def _stamped(send: Send, header: tuple[bytes, bytes]) -> Send:
    def stamped_send(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), header]
        return send(message)

    return stamped_send


MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


def _limit_headers(scope: Scope) -> Response | None:
    """Requests with more than ``MAX_HEADERS`` headers or ``MAX_HEADER_BYTES`` of names and
    values get 431 before any other work. uvicorn's httptools parser sets no limit of its own,
    and every header is copied into dicts several times per request downstream."""
    headers = scope["headers"]
    if len(headers) <= MAX_HEADERS and sum(len(n) + len(v) for n, v in headers) <= MAX_HEADER_BYTES:
        return None
    scope[ERROR_CODE_KEY] = "HeadersTooLarge"
    return error_response(
        431,
        "Validation",
        "HeadersTooLarge",
        f"Request headers are limited to {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes",
    )


class ApiKeys:
    """When ``auth.apiKeys`` is set, every route but health and docs needs a valid ``x-api-key``.

    The presented key is hashed with SHA-256 and compared in constant time with every
    configured digest (all of them, so timing does not tell which one came close). A key with a
    rate limit (its own ``rateLimit``, else ``auth.rateLimit``) draws one token per request from
    its bucket; an empty bucket is a 429 with ``Retry-After``, before any work is done.
    """

    def __init__(self) -> None:
        # One bucket per key and limit: a reload that changes a limit starts a fresh bucket.
        self._buckets: dict[tuple[str, RateLimit], TokenBucket] = {}

    def _throttled(self, key: ApiKey, default: RateLimit | None) -> float:
        limit = key.rate_limit or default
        if limit is None:
            return 0.0
        bucket = self._buckets.get((key.id, limit))
        if bucket is None:
            bucket = TokenBucket(limit.requests_per_second, limit.burst)
            self._buckets[(key.id, limit)] = bucket
        return bucket.try_acquire()

    def check(self, scope: Scope, auth: AuthConfig) -> Response | None:
        """The refusal to answer instead of serving the request, or None to serve it."""
        keys = auth.api_keys
        if not keys or scope["path"] in PUBLIC_PATHS:
            return None
        presented = next((v for k, v in scope["headers"] if k == b"x-api-key"), None)
        if presented is None:
            scope[ERROR_CODE_KEY] = "MissingApiKey"
            return error_response(
                401, "Authorization", "MissingApiKey", "The x-api-key header is required"
            )
        digest = hashlib.sha256(presented).hexdigest().encode()
        matched: ApiKey | None = None
        for key in keys:
            if hmac.compare_digest(digest, key.sha256.encode()):
                matched = key
        if matched is None:
            scope[ERROR_CODE_KEY] = "InvalidApiKey"
            return error_response(403, "Authorization", "InvalidApiKey", "The API key is not valid")
        wait = self._throttled(matched, auth.rate_limit)
        if not wait:
            return None
        scope[ERROR_CODE_KEY] = "TooManyRequests"
        return error_response(
            429,
            "Throttling",
            "TooManyRequests",
            f"Rate limit of API key '{matched.id}' exceeded",
            retry_after=float(math.ceil(wait)),
        )
