"""botocore errors translated into the p13n error tree (``schemas.errors``).

Where boto is called, what it raises becomes a p13n error with
``raise translate(exc, "what we were doing") from exc``.

How an error is classified, first match wins:

1. the error code in ``ERROR_CODES`` (codes from Kinesis, Firehose, DynamoDB, S3, Lambda, STS);
2. a code starting with ``AccessDenied``: ``OperatorError``; with ``KMS``: ``Forbidden``;
3. the HTTP status: 429 ``Throttled``, 503 ``Unavailable``, other 5xx ``UpstreamError``,
   anything else ``InvalidRequest``.

Transport failures (connection refused or closed, timeouts) are ``Unavailable``; no credentials
at all (botocore's ``NoCredentialsError``) is an ``OperatorError``, like a refused signature.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from schemas.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    OperatorError,
    P13nError,
    Throttled,
    Unavailable,
    UpstreamError,
)

ERROR_CODES: dict[str, type[P13nError]] = {
    # throttling: the call was fine, the rate was not
    "ProvisionedThroughputExceededException": Throttled,
    "ThrottlingException": Throttled,
    "Throttling": Throttled,
    "LimitExceededException": Throttled,
    "RequestLimitExceeded": Throttled,
    "TooManyRequestsException": Throttled,
    "SlowDown": Throttled,
    "KMSThrottlingException": Throttled,  # before the KMS* prefix rule: it is a rate limit
    # the resource is missing (or being created / deleted / resharded)
    "ResourceNotFoundException": NotFound,
    "NoSuchBucket": NotFound,
    "NoSuchKey": NotFound,
    "ResourceInUseException": Unavailable,
    # the request itself is wrong
    "ValidationException": InvalidRequest,
    "InvalidArgumentException": InvalidRequest,
    "InvalidParameterValueException": InvalidRequest,
    "InvalidRequestContentException": InvalidRequest,
    "SerializationException": InvalidRequest,
    "DryRunOperationException": InvalidRequest,
    # who we are, or what the key lets us do: the operator fixes credentials or policies, and
    # the same records then go through (a consumer pauses on these, never dead-letters)
    "AccessDeniedException": OperatorError,
    "AccessDenied": OperatorError,
    "UnrecognizedClientException": OperatorError,
    "InvalidSignatureException": OperatorError,
    "SignatureDoesNotMatch": OperatorError,
    "IncompleteSignature": OperatorError,
    "InvalidClientTokenId": OperatorError,
    "InvalidAccessKeyId": OperatorError,
    "ExpiredTokenException": OperatorError,
    "ExpiredToken": OperatorError,
    "KMSAccessDeniedException": OperatorError,
    "KMSDisabledException": Forbidden,
    "KMSInvalidStateException": Forbidden,
    "KMSNotFoundException": Forbidden,
    "KMSOptInRequired": Forbidden,
    # iterators and page tokens expire; getting a fresh one is the fix
    "ExpiredIteratorException": Unavailable,
    "ExpiredNextTokenException": Unavailable,
    # the service is failing
    "InternalFailure": Unavailable,
    "InternalFailureException": Unavailable,
    "InternalServerError": Unavailable,
    "InternalError": Unavailable,
    "ServiceUnavailable": Unavailable,
    "ServiceUnavailableException": Unavailable,
}

# Short codes for the errors callers branch on (e.g. a reader renewing its iterator).
_CODE_ALIASES = {"ExpiredIteratorException": "ExpiredIterator"}


def error_class(code: str, status: int | None = None) -> type[P13nError]:
    """The p13n error class for an AWS error code (and HTTP status, when the code is unknown)."""
    known = ERROR_CODES.get(code)
    if known is not None:
        return known
    if code.startswith("AccessDenied"):
        return OperatorError
    if code.startswith("KMS"):
        return Forbidden
    if status == 429:
        return Throttled
    if status == 503:
        return Unavailable
    if status is not None and status >= 500:
        return UpstreamError
    return InvalidRequest


def from_code(code: str, message: str, what: str, status: int | None = None) -> P13nError:
    """Build the p13n error for an AWS error code, e.g. a PutRecords per-entry ``ErrorCode``."""
    text = f"{what}: {code}: {message}" if message else f"{what}: {code}"
    return error_class(code, status)(text, code=_CODE_ALIASES.get(code, code))


def translate(exc: Exception, what: str) -> P13nError:
    """The p13n error for ``exc`` raised while doing ``what`` (e.g. "kinesis PutRecords")."""
    if isinstance(exc, P13nError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return from_code(
            str(error.get("Code") or "Unknown"), str(error.get("Message", "")), what, status
        )
    if isinstance(exc, HTTPClientError | ConnectTimeoutError | ReadTimeoutError):
        # ConnectionError, EndpointConnectionError, ConnectionClosedError, timeouts, proxy/SSL
        return Unavailable(f"{what}: {exc}", code=type(exc).__name__)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return OperatorError(f"{what}: {exc}", code=type(exc).__name__)
    if isinstance(exc, ParamValidationError):
        return InvalidRequest(f"{what}: {exc}", code="ParamValidation")
    if isinstance(exc, BotoCoreError | OSError):
        # Truncated bodies, checksum mismatches, sockets closing under us: worth another try.
        return Unavailable(f"{what}: {exc}", code=type(exc).__name__)
    return P13nError(f"{what}: {type(exc).__name__}: {exc}")
