"""boto3 client construction and the botocore → p13n error mapping (tested complete)."""

from __future__ import annotations

import time

import botocore.session
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from aws.clients import client
from aws.errors import ERROR_CODES, translate
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
from tests.fixtures.servers import free_port

# What each code must become. Written out here, not derived from the module, so that a changed
# or added mapping has to be made twice, on purpose.
EXPECTED: dict[str, type[P13nError]] = {
    "ProvisionedThroughputExceededException": Throttled,
    "ThrottlingException": Throttled,
    "Throttling": Throttled,
    "LimitExceededException": Throttled,
    "RequestLimitExceeded": Throttled,
    "TooManyRequestsException": Throttled,
    "SlowDown": Throttled,
    "KMSThrottlingException": Throttled,
    "ResourceNotFoundException": NotFound,
    "NoSuchBucket": NotFound,
    "NoSuchKey": NotFound,
    "ResourceInUseException": Unavailable,
    "ValidationException": InvalidRequest,
    "InvalidArgumentException": InvalidRequest,
    "InvalidParameterValueException": InvalidRequest,
    "InvalidRequestContentException": InvalidRequest,
    "SerializationException": InvalidRequest,
    "DryRunOperationException": InvalidRequest,
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
    "ExpiredIteratorException": Unavailable,
    "ExpiredNextTokenException": Unavailable,
    "InternalFailure": Unavailable,
    "InternalFailureException": Unavailable,
    "InternalServerError": Unavailable,
    "InternalError": Unavailable,
    "ServiceUnavailable": Unavailable,
    "ServiceUnavailableException": Unavailable,
}


def client_error(code: str, status: int = 400, message: str = "boom") -> ClientError:
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutRecords")  # type: ignore[arg-type]


def test_the_table_is_the_expected_table() -> None:
    assert {code: cls.__name__ for code, cls in ERROR_CODES.items()} == {
        code: cls.__name__ for code, cls in EXPECTED.items()
    }


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED.items()))
def test_every_code_maps_to_its_class(code: str, expected: type[P13nError]) -> None:
    # A 400 status, so a code that fell through to the status rules would show up wrong.
    error = translate(client_error(code, status=400), "kinesis PutRecords s")

    assert type(error) is expected
    assert "kinesis PutRecords s" in error.message


def test_every_kinesis_error_in_the_botocore_model_is_mapped() -> None:
    model = botocore.session.get_session().get_service_model("kinesis")

    unmapped = [shape.name for shape in model.error_shapes if shape.name not in ERROR_CODES]

    assert unmapped == []


def test_expired_iterator_is_retryable_with_a_short_code() -> None:
    error = translate(client_error("ExpiredIteratorException"), "GetRecords")

    assert isinstance(error, Unavailable)
    assert error.code == "ExpiredIterator"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("KMSSomethingNew", 400, Forbidden),
        ("AccessDeniedForSomething", 403, OperatorError),
        ("SomethingNew", 429, Throttled),
        ("SomethingNew", 503, Unavailable),
        ("SomethingNew", 500, UpstreamError),
        ("SomethingNew", 502, UpstreamError),
        ("SomethingNew", 400, InvalidRequest),
        ("SomethingNew", 404, InvalidRequest),
    ],
)
def test_unknown_codes_fall_back_on_prefix_then_status(
    code: str, status: int, expected: type[P13nError]
) -> None:
    assert type(translate(client_error(code, status), "x")) is expected


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:1"),
    ],
)
def test_transport_errors_are_unavailable(exc: Exception) -> None:
    error = translate(exc, "x")

    assert type(error) is Unavailable
    assert error.code == type(exc).__name__


def test_client_side_errors() -> None:
    # Credentials are the operator's to fix: a consumer pauses on this, never dead-letters.
    assert type(translate(NoCredentialsError(), "x")) is OperatorError
    assert type(translate(ParamValidationError(report="bad"), "x")) is InvalidRequest
    already = Throttled("slow down")
    assert translate(already, "x") is already


def test_client_has_explicit_timeouts_retries_and_region(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")

    kinesis = client("kinesis", max_attempts=1, connect_timeout=1.5, read_timeout=4.0)

    assert kinesis.meta.region_name == "us-east-1"
    assert kinesis.meta.config.connect_timeout == 1.5
    assert kinesis.meta.config.read_timeout == 4.0
    assert kinesis.meta.config.retries == {"total_max_attempts": 1, "mode": "standard"}


def test_client_leaves_endpoint_resolution_to_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4568")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")

    assert client("kinesis").meta.endpoint_url == "http://127.0.0.1:4568"
    assert client("kinesis").meta.region_name == "eu-west-1"
    assert client("kinesis", endpoint_url="http://other:1").meta.endpoint_url == "http://other:1"


@pytest.mark.parametrize("server", ["kinesis_local", "moto_server"])
def test_real_missing_stream_is_not_found(server: str, request: pytest.FixtureRequest) -> None:
    kinesis = client("kinesis", endpoint_url=request.getfixturevalue(server))

    with pytest.raises(ClientError) as caught:
        kinesis.describe_stream_summary(StreamName="no-such-stream")

    assert type(translate(caught.value, "x")) is NotFound


def test_real_refused_connection_is_unavailable(aws_test_env: None) -> None:
    kinesis = client("kinesis", endpoint_url=f"http://127.0.0.1:{free_port()}")

    started = time.monotonic()
    with pytest.raises(EndpointConnectionError) as caught:
        kinesis.list_streams()

    assert type(translate(caught.value, "x")) is Unavailable
    assert time.monotonic() - started < 3.0
