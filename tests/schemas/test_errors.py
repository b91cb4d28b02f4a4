"""The error tree speaks the sample project's vocabulary: every class's status, type and code."""

from __future__ import annotations

import pytest

from schemas import errors
from web.openapi import ERROR_TYPES

# (class, status, type, default code): what a client sees when nothing more specific is said.
TREE = [
    (errors.P13nError, 500, "Unhandled", "InternalError"),
    (errors.InvalidRequest, 400, "Validation", "ValidationError"),
    (errors.Forbidden, 403, "Authorization", "Forbidden"),
    (errors.NotFound, 404, "Configuration", "NotFound"),
    (errors.PayloadTooLarge, 413, "Validation", "PayloadTooLarge"),
    (errors.UnsupportedMediaType, 415, "Validation", "UnsupportedMediaType"),
    (errors.ConfigError, 500, "Configuration", "ConfigurationError"),
    (errors.Throttled, 429, "Throttling", "TooManyRequests"),
    (errors.Unavailable, 503, "Unavailable", "ServiceUnavailable"),
    (errors.UpstreamError, 502, "Recommender", "UpstreamError"),
    (errors.UpstreamTimeout, 504, "Recommender", "UpstreamTimeout"),
]


@pytest.mark.parametrize(("cls", "status", "type_", "code"), TREE)
def test_each_class_has_its_status_type_and_code(
    cls: type[errors.P13nError], status: int, type_: str, code: str
) -> None:
    error = cls("m")
    assert (error.status, error.type, error.code) == (status, type_, code)
    assert (error.type, error.code, error.message) == (type_, code, "m")
    # Every type a client can get is in the OpenAPI's enum of them.
    assert type_ in ERROR_TYPES


def test_a_backend_failure_carries_the_backends_type() -> None:
    error = errors.UpstreamError("boom", code="ThrottlingException", type_="Personalize")
    assert (error.type, error.code, error.message) == ("Personalize", "ThrottlingException", "boom")
    assert errors.UpstreamError("other").type == "Recommender"  # the class is untouched


def test_every_query_backend_type_is_documented() -> None:
    from query.resolvers import ERROR_TYPES as BACKENDS
    from query.resolvers import REGISTRY

    assert set(BACKENDS) == set(REGISTRY)
    assert set(BACKENDS.values()) <= set(ERROR_TYPES)
