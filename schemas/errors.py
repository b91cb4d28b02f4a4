"""The error tree every room raises from, and what each error means to a client.

::

    P13nError                      (type, code, message, status)
    ├── PermanentError             retrying the same input fails the same way
    │   ├── InvalidRequest         400  malformed or out-of-limit input
    │   ├── Unauthorized           401  no API key
    │   ├── Forbidden              403  wrong API key
    │   ├── NotFound               404  unknown namespace, recommender, resource
    │   ├── UnsupportedMediaType   415
    │   ├── PayloadTooLarge        413
    │   ├── ConfigError            invalid configuration (never reaches a client as such)
    │   └── RecordError            a stream record that cannot be decoded or delivered
    └── RetryableError             the same call may succeed later
        ├── Throttled              429  (Retry-After)
        ├── Unavailable            503  (Retry-After): stream unreachable, producer full
        ├── UpstreamError          502  a recommender or target answered with a failure
        └── UpstreamTimeout        504

Lower-level errors (botocore, sqlite3, sockets) are translated into this tree where those
libraries are called, with ``raise ... from``. The HTTP layer turns any ``P13nError`` into the
JSON body ``{"type", "code", "message"}`` in exactly one place (``p13n.errors``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class P13nError(Exception):
    """Base of every error p13n raises on purpose."""

    status: int = 500
    type: str = "ServerError"
    default_code: str = "InternalError"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        return {"type": self.type, "code": self.code, "message": self.message}


class PermanentError(P13nError):
    """Retrying the same input will fail the same way."""

    type = "ClientError"


class RetryableError(P13nError):
    """The same call may succeed later; callers back off and retry."""

    status = 503
    type = "ServerError"
    default_code = "ServiceUnavailable"


class InvalidRequest(PermanentError):
    status = 400
    default_code = "ValidationError"


class Unauthorized(PermanentError):
    status = 401
    default_code = "Unauthorized"


class Forbidden(PermanentError):
    status = 403
    default_code = "Forbidden"


class NotFound(PermanentError):
    status = 404
    default_code = "NotFound"


class PayloadTooLarge(PermanentError):
    status = 413
    default_code = "PayloadTooLarge"


class UnsupportedMediaType(PermanentError):
    status = 415
    default_code = "UnsupportedMediaType"


class ConfigError(PermanentError):
    """The configuration is invalid; ``errors`` lists ``(json_path, reason)`` pairs."""

    type = "ServerError"
    status = 500
    default_code = "ConfigurationError"

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RecordError(PermanentError):
    """A stream record that cannot be decoded, or that a target rejects for good."""

    type = "ServerError"
    status = 500
    default_code = "RecordError"


class Throttled(RetryableError):
    status = 429
    type = "ClientError"
    default_code = "TooManyRequests"


class Unavailable(RetryableError):
    status = 503
    default_code = "ServiceUnavailable"


class UpstreamError(RetryableError):
    """``backend_status`` is the HTTP status the backend itself answered with, when it did
    answer with one (a 4xx there is the backend refusing the request, not failing)."""

    status = 502
    default_code = "UpstreamError"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        backend_status: int | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.backend_status = backend_status


class UpstreamTimeout(RetryableError):
    status = 504
    default_code = "UpstreamTimeout"


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value: delta-seconds or an HTTP date (a
    date in the past is 0); None when the value is neither."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return float(max(0, math.ceil((when - datetime.now(UTC)).total_seconds())))
