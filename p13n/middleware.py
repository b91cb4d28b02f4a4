"""Pure ASGI middleware: request observation (metrics + one JSON log line) and API keys."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumers.ratelimit import TokenBucket
from p13n.docs import PUBLIC_PATHS as DOCS_PATHS
from p13n.errors import ERROR_CODE_KEY, error_response
from p13n.logs import AccessLog
from p13n.metrics import Metrics
from schemas.config import ApiKey, Config, RateLimit

# Health probes carry no key; the API docs are public, as FastAPI's are (see p13n.docs).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"}) | DOCS_PATHS


class ObserveRequests:
    """Counts and times every request by route template, adds the config version header,
    and logs one line per request (never headers or bodies: keys must not reach logs)."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, config: Callable[[], Config], access_log: AccessLog
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.config = config
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        version = self.config().version
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if version is not None:
                    message.setdefault("headers", [])
                    message["headers"] = [
                        *message["headers"],
                        (b"x-personalization-config-version", version.encode("latin-1", "replace")),
                    ]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            code = scope.get(ERROR_CODE_KEY)
            self.metrics.observe_request(template, method, status, elapsed, code)
            entry = {
                "message": f"{method} {scope['path']} {status}",
                "route": template,
                "status": status,
                "ms": round(elapsed * 1000, 3),
            }
            if code is not None:
                entry["code"] = code
            self.access_log.write(entry)


MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100


class LimitHeaders:
    """Requests with more than ``MAX_HEADERS`` headers or ``MAX_HEADER_BYTES`` of names and
    values get 431 before any other work. uvicorn's httptools parser sets no limit of its own,
    and every header is copied into dicts several times per request downstream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers)
            if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADERS:
                scope[ERROR_CODE_KEY] = "HeadersTooLarge"
                response = error_response(
                    431,
                    "ClientError",
                    "HeadersTooLarge",
                    f"Request headers are limited to {MAX_HEADERS} headers and "
                    f"{MAX_HEADER_BYTES} bytes",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ApiKeys:
    """When ``auth.apiKeys`` is set, every route but health and docs needs a valid ``x-api-key``.

    The presented key is hashed with SHA-256 and compared in constant time with every
    configured digest (all of them, so timing does not tell which one came close). A key with a
    rate limit (its own ``rateLimit``, else ``auth.rateLimit``) draws one token per request from
    its bucket; an empty bucket is a 429 with ``Retry-After``, before any work is done.
    """

    def __init__(self, app: ASGIApp, config: Callable[[], Config]) -> None:
        self.app = app
        self.config = config
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = self.config().auth
        keys = auth.api_keys
        if scope["type"] != "http" or not keys or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        presented = next((v for k, v in scope["headers"] if k == b"x-api-key"), None)
        if presented is None:
            scope[ERROR_CODE_KEY] = "MissingApiKey"
            response = error_response(
                401, "ClientError", "MissingApiKey", "The x-api-key header is required"
            )
        else:
            digest = hashlib.sha256(presented).hexdigest().encode()
            matched: ApiKey | None = None
            for key in keys:
                if hmac.compare_digest(digest, key.sha256.encode()):
                    matched = key
            if matched is None:
                scope[ERROR_CODE_KEY] = "InvalidApiKey"
                response = error_response(
                    403, "ClientError", "InvalidApiKey", "The API key is not valid"
                )
            else:
                wait = self._throttled(matched, auth.rate_limit)
                if not wait:
                    await self.app(scope, receive, send)
                    return
                scope[ERROR_CODE_KEY] = "TooManyRequests"
                response = error_response(
                    429,
                    "ClientError",
                    "TooManyRequests",
                    f"Rate limit of API key '{matched.id}' exceeded",
                    retry_after=float(math.ceil(wait)),
                )
        await response(scope, receive, send)
