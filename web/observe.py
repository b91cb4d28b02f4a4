"""The outermost layer: every HTTP request counted and timed by route template, and one
access-log line for it (never headers or bodies: keys must not reach logs).

Outermost so that it sees the answer every client sees, the 500 of ``web.errors.ErrorAnswers``
included, with the route the router matched (``scope["route"]``) and the error code a handler
left in the scope (``web.errors.ERROR_CODE_KEY``). An error raised by a layer below it before
anything was answered (never by an endpoint: ``ErrorAnswers`` answers those) is answered here
the same way, then raised again for the server to log.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Protocol

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import ERROR_CODE_KEY, unexpected_error


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


class Observe:
    def __init__(self, app: ASGIApp, metrics: RequestMetrics, access_log: RequestLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None  # until the answer starts

        def observed_send(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
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
