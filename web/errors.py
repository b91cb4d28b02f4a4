"""The one place errors become HTTP responses: ``{"type", "code", "message"}``.

Every ``P13nError`` keeps its status and code; Starlette's own HTTP errors (unknown path,
wrong method) get the same shape; anything else is logged with its traceback and answered as a
500 that says nothing about the inside.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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


HANDLERS = {P13nError: p13n_error, HTTPException: http_error, Exception: unexpected_error}
