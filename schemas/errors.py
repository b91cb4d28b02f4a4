"""The error tree every room raises from, and what each error means to a client.

::

    P13nError                      (type, code, message, status)         type
    ├── PermanentError             retrying the same input fails the same way
    │   ├── InvalidRequest         400  malformed or out-of-limit input   Validation
    │   ├── Forbidden              403  refused (a CORS origin)           Authorization
    │   │   └── OperatorError          the deployment, not the data, is wrong (AWS credentials,
    │   │                              placeholders left in the config): pause, never dead-letter
    │   ├── NotFound               404  unknown namespace, recommender    Configuration
    │   ├── UnsupportedMediaType   415                                    Validation
    │   ├── PayloadTooLarge        413                                    Validation
    │   ├── ConfigError            invalid configuration                  Configuration
    │   └── RecordError            a stream record that cannot be decoded or delivered
    └── RetryableError             the same call may succeed later
        ├── Throttled              429  (Retry-After)                     Throttling
        ├── Unavailable            503  (Retry-After): stream unreachable Unavailable
        ├── UpstreamError          502  a recommender or target failed    Recommender
        └── UpstreamTimeout        504                                    Recommender

``type`` is the sample project's vocabulary (``Validation``, ``Configuration``, ``Personalize``,
``Function``, ``SageMaker``, ``DynamoDB``, ``Unhandled``), so a client that branches on it keeps
working; a backend's failure carries the backend's type (``Personalize``, ``Function``, ...),
set per instance with ``type_=`` or by the query path, which knows which backend failed.

Lower-level errors (botocore, sqlite3, sockets) are translated into this tree where those
libraries are called, with ``raise ... from``. The HTTP layer turns any ``P13nError`` into the
JSON body ``{"type", "code", "message"}`` in exactly one place (``web.errors``). The API-key
check answers 401 ``MissingApiKey`` and 403 ``InvalidApiKey`` itself, before any handler runs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class P13nError(Exception):
    """Base of every error p13n raises on purpose."""

    status: int = 500
    type: str = "Unhandled"
    default_code: str = "InternalError"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retry_after = retry_after
        if type_ is not None:
            self.type = type_


class PermanentError(P13nError):
    """Retrying the same input will fail the same way."""

    type = "Validation"


class RetryableError(P13nError):
    """The same call may succeed later; callers back off and retry."""

    status = 503
    type = "Unavailable"
    default_code = "ServiceUnavailable"


class InvalidRequest(PermanentError):
    status = 400
    default_code = "ValidationError"


class Forbidden(PermanentError):
    status = 403
    type = "Authorization"
    default_code = "Forbidden"


class OperatorError(Forbidden):
    """AWS credentials missing, expired or refused, or a placeholder (``[REGION]``) left in the
    config. A ``Forbidden`` to callers, but a consumer pauses its group on it and retries after
    the operator fixes it; the records are never dead-lettered for it."""

    default_code = "OperatorError"


class NotFound(PermanentError):
    status = 404
    type = "Configuration"
    default_code = "NotFound"


class PayloadTooLarge(PermanentError):
    status = 413
    default_code = "PayloadTooLarge"


class UnsupportedMediaType(PermanentError):
    status = 415
    default_code = "UnsupportedMediaType"


class ConfigError(PermanentError):
    """The configuration is invalid; ``errors`` lists ``(json_path, reason)`` pairs."""

    type = "Configuration"
    status = 500
    default_code = "ConfigurationError"

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RecordError(PermanentError):
    """A stream record that cannot be decoded, or that a target rejects for good."""

    type = "Record"
    status = 500
    default_code = "RecordError"


class Throttled(RetryableError):
    status = 429
    type = "Throttling"
    default_code = "TooManyRequests"


class Unavailable(RetryableError):
    status = 503
    default_code = "ServiceUnavailable"


class UpstreamError(RetryableError):
    """``backend_status`` is the HTTP status the backend itself answered with, when it did
    answer with one (a 4xx there is the backend refusing the request, not failing)."""

    status = 502
    type = "Recommender"
    default_code = "UpstreamError"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        type_: str | None = None,
        backend_status: int | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after, type_=type_)
        self.backend_status = backend_status


class UpstreamTimeout(RetryableError):
    status = 504
    type = "Recommender"
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
