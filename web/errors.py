"""The one place errors become HTTP responses: ``{"type", "code", "message"}``.

Every ``P13nError`` keeps its status and code; Starlette's own HTTP errors (unknown path,
wrong method) get the same shape; anything else is logged with its traceback and answered as a
500 that says nothing about the inside.

``ErrorAnswers`` is the layer that does it, right around the router: what the router or an
endpoint raises is answered there, below the layers that add headers, so an error's answer
carries them like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.errors import P13nError

log = logging.getLogger("p13n.http")

# Where a handler leaves the error code for the observing middleware to count.
ERROR_CODE_KEY = "p13n.error_code"

_HTTP_CODES = {
    404: ("Validation", "NotFound", "No such route"),
    405: ("Validation", "MethodNotAllowed", "Method not allowed on this route"),
}


def error_response(
    status: int,
    type_: str,
    code: str,
    message: str,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    extra = dict(headers or {})
    if retry_after is not None:
        extra["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(
        {"type": type_, "code": code, "message": message}, status_code=status, headers=extra
    )


async def p13n_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, P13nError)  # registered for this class only
    request.scope[ERROR_CODE_KEY] = exc.code
    retry_after = exc.retry_after
    if retry_after is None and exc.status in (429, 503):
        retry_after = 1
    return error_response(exc.status, exc.type, exc.code, exc.message, retry_after)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # registered for this class only
    type_, code, message = _HTTP_CODES.get(
        exc.status_code, ("Validation", "HttpError", str(exc.detail))
    )
    request.scope[ERROR_CODE_KEY] = code
    # A 405 carries Starlette's Allow header: clients learn which methods the route takes.
    return error_response(exc.status_code, type_, code, message, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    request.scope[ERROR_CODE_KEY] = "InternalError"
    # The sample's type and code; unlike the sample, no message or stack trace of the inside.
    return error_response(500, "Unhandled", "InternalError", "An internal error occurred")


class ErrorAnswers:
    """Answers what ``app`` raises before its answer started: a ``P13nError`` or Starlette's
    ``HTTPException`` with its JSON body; anything else with the 500 of ``unexpected_error``,
    and then raises it again for the server to log, as Starlette's server-error middleware
    does. After the answer started nothing can be answered any more: the error is raised.

    It stands in for the two exception middlewares a ``Starlette`` application puts around its
    router — one layer and one wrapped ``send`` instead of two of each, on every request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Starlette's router and routes raise HTTPException for an unknown path or a method a
        # route does not take only inside an application, which they recognise by
        # ``scope["app"]``; outside one they answer in plain text themselves.
        scope["app"] = self
        started = False

        def tracked_send(message: Message) -> Awaitable[None]:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            return send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            if started:
                raise
            request = Request(scope, receive)
            if isinstance(exc, P13nError):
                response = await p13n_error(request, exc)
            elif isinstance(exc, HTTPException):
                response = await http_error(request, exc)
            else:
                response = await unexpected_error(request, exc)
            await response(scope, receive, send)
            if not isinstance(exc, P13nError | HTTPException):
                raise  # unexpected: the server logs it too
