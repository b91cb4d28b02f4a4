"""boto3 clients built one way, and botocore errors translated into ``schemas.errors``.

Every room that calls AWS builds its client with ``client()`` (explicit timeouts and retry
budget, so botocore's retries and ours don't multiply) and turns what boto raises into the
p13n error tree with ``raise translate(exc, "what we were doing") from exc``.

How an error is classified, first match wins:

1. the error code in ``ERROR_CODES`` (codes from Kinesis, Firehose, DynamoDB, S3, Lambda, STS);
2. a code starting with ``AccessDenied``: ``OperatorError``; with ``KMS``: ``Forbidden``;
3. the HTTP status: 429 ``Throttled``, 503 ``Unavailable``, other 5xx ``UpstreamError``,
   anything else ``InvalidRequest``.

Transport failures (connection refused or closed, timeouts) are ``Unavailable``; no credentials
at all (botocore's ``NoCredentialsError``) is an ``OperatorError``, like a refused signature.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
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

DEFAULT_REGION = "us-east-1"

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


def client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    max_attempts: int = 2,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
    retry_mode: str = "standard",
) -> Any:
    """A boto3 client with explicit timeouts and retries.

    ``max_attempts`` counts every attempt including the first (botocore's
    ``total_max_attempts``). The endpoint, when not given, is resolved the standard way
    (``AWS_ENDPOINT_URL_<SERVICE>``, ``AWS_ENDPOINT_URL``, the config file); the region
    falls back from the argument to the environment/config to ``us-east-1``.
    """
    session = boto3.session.Session()
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": max_attempts, "mode": retry_mode},
    )
    return session.client(
        service,
        region_name=region or session.region_name or os.environ.get("AWS_REGION") or DEFAULT_REGION,
        endpoint_url=endpoint_url,
        config=config,
    )


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
