"""The service's middleware: request observation (metrics + one JSON log line), header limits,
CORS, API keys with rate limits, the direct routes and gzip, in one ASGI layer."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.config import ApiKey, AuthConfig, CompressionConfig, Config, RateLimit
from streams.pacing import TokenBucket
from web.compression import MEMO_KEY, accepts_gzip, compressible, gzip
from web.cors import Cors
from web.docs import PUBLIC_PATHS as DOCS_PATHS
from web.errors import ERROR_CODE_KEY, error_response, unexpected_error
from web.fastpath import DirectRoutes

# Health probes carry no key; the API docs are public, as FastAPI's are (see web.docs).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"}) | DOCS_PATHS


class RequestMetrics(Protocol):
    """Where each request is counted and timed; ``p13n.metrics`` implements it."""

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, code: str | None
    ) -> None: ...


class RequestLog(Protocol):
    """The access log: one line per request; ``p13n.logs.AccessLog`` implements it."""

    def request(
        self, method: str, path: str, status: int, route: str, seconds: float, code: str | None
    ) -> None: ...


class Front:
    """The service's outermost layer: every HTTP request passes through it once.

    In order: header limits (431), then a CORS preflight answered (``web.cors``), then the API
    key and its rate limit (401/403/429) unless the path is public, then the request goes to its
    direct route (``web.fastpath``) if it has one, else to the Starlette application (router,
    exception handlers). Around all of it: counted and timed by route template, the config
    version and CORS headers added to the answer, the answer gzipped when the client accepts it
    (``web.compression``), and one access-log line (never headers or bodies: keys must not
    reach logs). An unexpected error in a direct route is answered as Starlette's server-error
    middleware answers the others: the application's 500 handler, then raised again for the
    server to log.

    One layer rather than one per concern, and outside Starlette's own: each ASGI layer costs a
    coroutine and often a wrapped ``send`` per request, which on ``POST /events`` added up to a
    fifth of the CPU.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: RequestMetrics,
        config: Callable[[], Config],
        access_log: RequestLog,
        routes: Sequence[tuple[Route, ASGIApp]] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.config = config
        self.access_log = access_log
        self.direct = DirectRoutes(routes)
        self.keys = ApiKeys()
        self._built: tuple[Config, Cors] | None = None

    def _policies(self, config: Config) -> tuple[Cors, CompressionConfig]:
        """The CORS headers of ``config``, encoded once per config object."""
        built = self._built
        if built is None or built[0] is not config:
            built = self._built = (config, Cors(config.cors))
        return built[1], config.compression

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        config = self.config()
        version = config.version
        cors, compression = self._policies(config)
        status: int | None = None  # until the answer starts
        origin: bytes | None = None
        gzip_ok = False
        for name, value in scope["headers"]:  # one pass for the headers read here
            if name == b"origin":
                origin = value
            elif name == b"accept-encoding":
                # not for HEAD: its answer has the headers of a body it does not carry
                gzip_ok = compression.enabled and accepts_gzip(value) and scope["method"] != "HEAD"
        extra: list[tuple[bytes, bytes]] = []
        if version is not None:
            extra.append(
                (b"x-personalization-config-version", version.encode("latin-1", "replace"))
            )
        if origin is not None and cors.enabled and cors.applies(scope["path"]):
            extra += cors.answer_headers(origin)
        held: Message | None = None  # an answer start waiting for its body to be compressed
        length_at: int | None = None  # where its content-length is

        async def observed_send(message: Message) -> None:
            nonlocal status, held, length_at
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
                if gzip_ok:
                    headers = message["headers"] = list(message.get("headers", ()))
                    length_at = _worth_gzip(headers, compression.minimum_bytes)
                    if length_at is not None:
                        held = message
                        return
            elif held is not None:
                start, held = held, None
                body = message.get("body", b"")
                if not message.get("more_body", False):
                    packed = gzip(body, compression.level, scope.get(MEMO_KEY))
                    headers = start["headers"]
                    headers[length_at] = (b"content-length", str(len(packed)).encode())
                    headers += _GZIPPED
                    message["body"] = packed
                await send(start)  # streamed: sent as it is
            await send(message)

        try:
            refusal = _limit_headers(scope)
            if (
                refusal is None
                and origin is not None
                and scope["method"] == "OPTIONS"
                and cors.enabled
                and cors.applies(scope["path"])
                and any(n == b"access-control-request-method" for n, _ in scope["headers"])
            ):
                refusal = cors.preflight(scope, origin)  # before API keys: preflights carry none
            elif refusal is None:
                refusal = self.keys.check(scope, config.auth)
            if refusal is not None:
                await refusal(scope, receive, observed_send)
            elif not await self.direct.serve(scope, receive, observed_send):
                await self.app(scope, receive, observed_send)
        except Exception as exc:
            if status is None:  # nothing answered yet
                response = await unexpected_error(Request(scope, receive), exc)
                await response(scope, receive, observed_send)
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            code = scope.get(ERROR_CODE_KEY)
            answered = status or 500  # none: the server answers 500 itself
            self.metrics.observe_request(template, method, answered, elapsed, code)
            self.access_log.request(method, scope["path"], answered, template, elapsed, code)


_GZIPPED = ((b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding"))


def _worth_gzip(headers: list[tuple[bytes, bytes]], minimum: int) -> int | None:
    """Where the ``content-length`` is in ``headers``, if the answer they start is to be
    gzipped (``web.compression``): text-like, not encoded yet, and of a known length of at
    least ``minimum`` bytes; else None."""
    content_type = length = None
    length_at = 0
    for index, (name, value) in enumerate(headers):
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length, length_at = value, index
        elif name == b"content-encoding":
            return None
    if (
        length is not None
        and length.isdigit()
        and int(length) >= minimum
        and compressible(content_type)
    ):
        return length_at
    return None


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
