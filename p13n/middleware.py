"""Pure ASGI middleware: request observation (metrics + one JSON log line) and API keys."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from p13n.docs import PUBLIC_PATHS as DOCS_PATHS
from p13n.errors import ERROR_CODE_KEY, error_response
from p13n.logs import AccessLog
from p13n.metrics import Metrics
from schemas.config import Config

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


class ApiKeys:
    """When ``auth.apiKeys`` is set, every route but health and docs needs a valid ``x-api-key``.

    The presented key is hashed with SHA-256 and compared in constant time with every
    configured digest (all of them, so timing does not tell which one came close).
    """

    def __init__(self, app: ASGIApp, config: Callable[[], Config]) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self.config().auth.api_keys
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
            matched = False
            for key in keys:
                matched |= hmac.compare_digest(digest, key.sha256.encode())
            if matched:
                await self.app(scope, receive, send)
                return
            scope[ERROR_CODE_KEY] = "InvalidApiKey"
            response = error_response(
                403, "ClientError", "InvalidApiKey", "The API key is not valid"
            )
        await response(scope, receive, send)
