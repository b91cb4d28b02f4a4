"""Typed backend settings: read once by annotation, defaults kept, a wrong type is a
``ConfigError`` naming the key (not a ``KeyError`` at the first request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest

from query.metadata.dynamodb import LAYOUTS, DynamoDbSettings
from query.resolvers.http import HttpSettings
from query.settings import option, read_settings
from schemas.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    name: str = option("name")
    region: str | None = option("region", None)
    days: float = option("halfLifeDays", 7.0)
    headers: Mapping[str, str] = option("headers", None)


def test_values_are_read_by_their_keys_with_defaults() -> None:
    settings = read_settings(Sample, {"name": "n", "region": "", "headers": {"a": "b"}}, "here")
    assert settings == Sample("n", None, 7.0, {"a": "b"})
    assert read_settings(Sample, {"name": "n", "halfLifeDays": 2}, "here").days == 2.0
    with pytest.raises(FrozenInstanceError):
        settings.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 3}, "name"),
        ({"name": "n", "region": 1}, "region"),
        ({"name": "n", "halfLifeDays": "7"}, "halfLifeDays"),
        ({"name": "n", "halfLifeDays": True}, "halfLifeDays"),
        ({"name": "n", "headers": {"a": 1}}, "headers"),
        ({"name": "n", "headers": ["a"]}, "headers"),
    ],
)
def test_a_wrong_value_is_a_config_error_naming_its_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"here: '{key}'"):
        read_settings(Sample, options, "here")


def test_backend_settings_read_the_config_keys() -> None:
    http = read_settings(HttpSettings, {"url": "http://h/{userId}"}, "variation 'v'")
    assert http == HttpSettings("http://h/{userId}", {})
    dynamodb = DynamoDbSettings.of(
        {"type": "dynamodb", "layout": "p13n", "endpointUrl": "http://e"}
    )
    assert dynamodb.layout is LAYOUTS["p13n"] and dynamodb.endpoint_url == "http://e"
    assert dynamodb.table("shop") == "p13n-items-shop"
    with pytest.raises(ConfigError, match="layout"):
        DynamoDbSettings.of({"type": "dynamodb", "layout": "other"})
