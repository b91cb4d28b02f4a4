"""The config's JSON Schema: the sample project's configs and p13n's own pass unchanged, and a
broken config fails with exactly the JSON path and reason a person needs to fix it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

import schemas
from schemas.config import load_config

SCHEMA_PATH = Path(schemas.__file__).parent / "config_schema.json"
DEFAULT_CONFIG_PATH = Path(schemas.__file__).parent / "default_config.json"
# Copies of the sample project's configs (MIT-0), so the test runs on a clean clone.
SAMPLES = sorted((Path(__file__).parent / "data").glob("sample_*.json"))

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
LAMBDA_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rank-items"
TARGET_TYPES = (
    "['personalize-event-tracker', 'kinesis-stream', 'kinesis-firehose', 'http', 'lambda', "
    "'archive', 'interactions', 'evidently']"
)
VARIATION_TYPES = (
    "['personalize-campaign', 'personalize-recommender', 'sagemaker', 'lambda', 'function', "
    "'http', 'local']"
)
OPERATORS = (
    "['equals', 'less-than', 'greater-than', 'contains', 'starts-with', 'start-with', 'ends-with']"
)
LAMBDA_PATTERN = (
    "'^arn:aws(-cn|-us-gov)?:lambda:[a-z]{2}(-[a-z]+)+-[0-9]+:[0-9]{12}:function[:/]"
    "[a-zA-Z0-9_-]{1,64}(:(\\\\$LATEST|[a-zA-Z0-9_-]{1,128}))?$'"
)

# Paths used by the table of broken configs, all inside MINIMAL.
NS = "$.namespaces.shop"
REC = f"{NS}.recommenders['recommend-items']['for-you']"
VAR = f"{REC}.variations.main"
TARGET = f"{NS}.eventTargets[0]"
FIELD = f"{NS}.autoContext.deviceType"

MINIMAL: dict[str, Any] = {
    "namespaces": {
        "shop": {
            "autoContext": {
                "deviceType": {
                    "type": "string",
                    "rules": [
                        {
                            "type": "header-value",
                            "header": "cloudfront-is-mobile-viewer",
                            "valueMappings": [
                                {"operator": "equals", "value": "true", "mapTo": "Phone"}
                            ],
                        }
                    ],
                }
            },
            "recommenders": {
                "recommend-items": {"for-you": {"variations": {"main": {"type": "local"}}}}
            },
            "eventTargets": [{"type": "interactions"}],
        }
    }
}


def field(rule_type: str, **rule: Any) -> dict[str, Any]:
    return {"type": "string", "rules": [{"type": rule_type, **rule}]}


def mapping(operator: str, value: str | int, map_to: str | int) -> dict[str, Any]:
    return {"operator": operator, "value": value, "mapTo": map_to}


RICH: dict[str, Any] = {
    "$schema": "./config_schema.json",
    "version": "2024-06-01.3",
    "description": "Every p13n addition, target type and variation type at once.",
    "dataDir": "/var/lib/p13n",
    "partitionKey": "userId",
    "stream": {
        "type": "kinesis",
        "streamName": "p13n-events",
        "region": "eu-west-1",
        "endpointUrl": "http://127.0.0.1:4567",
        "aggregate": True,
        "producer": {
            "lingerMs": 5,
            "maxBatchRecords": 500,
            "maxBatchBytes": 4194304,
            "queueSize": 20000,
            "putTimeoutMs": 2000,
        },
    },
    "auth": {
        "apiKeys": [{"id": "web", "sha256": SHA}, {"id": "mobile", "sha256": "0" * 64}],
        "rateLimit": {"requestsPerSecond": 50.5, "burst": 100},
    },
    "limits": {"maxBodyBytes": 1048576},
    "cors": {
        "enabled": True,
        "allowOrigins": ["https://shop.example.com", "http://localhost:3000"],
        "allowHeaders": ["content-type", "x-api-key"],
        "exposeHeaders": ["etag"],
        "maxAgeSeconds": 600,
    },
    "compression": {"enabled": True, "minimumBytes": 2048, "level": 6},
    "deadLetter": {"uri": "s3://p13n-dead-letters/prod/"},
    "experimentStore": {
        "type": "dynamodb",
        "tableName": "p13n-experiments",
        "region": "eu-west-1",
        "endpointUrl": "http://localhost:5000",
    },
    "consumer": {
        "batchSize": 200,
        "maxAttempts": 8,
        "maxRecordAgeSeconds": 86400,
        "pollIntervalMs": 250,
    },
    "checkpoints": {
        "type": "dynamodb",
        "tableName": "p13n-checkpoints",
        "region": "eu-west-1",
        "endpointUrl": "http://localhost:8000",
        "leaseSeconds": 30,
    },
    "cacheControl": {"autoProvision": False, "noUserSpecified": {"maxAge": 600}},
    "autoContext": {
        "time_of_day": field("hour-of-day", valueMappings=[mapping("less-than", 12, "Morning")]),
        "weekday": {"type": "integer", "rules": [{"type": "day-of-week"}]},
        "season": {"type": "long", "default": 0, "rules": [{"type": "season-of-year"}]},
    },
    "filters": [{"arn": "arn:aws:personalize:eu-west-1:123456789012:filter/in-stock"}],
    "inferenceItemMetadata": {
        "type": "localdb",
        "syncInterval": 0,
        "uri": "s3://p13n-items/items.db",
    },
    "namespaces": {
        "retail_eu": {
            "name": "Retail EU",
            "description": "Storefront in the EU.",
            "deadLetter": {"uri": "file:///var/lib/p13n/dead"},
            "cacheControl": {"userSpecified": {"directives": "private"}},
            "inferenceItemMetadata": {
                "type": "dynamodb",
                "tableName": "items",
                "autoProvision": True,
                "billingMode": "PROVISIONED",
                "provisionedThroughput": {"readCapacityUnits": 5, "writeCapacityUnits": 1},
                "endpointUrl": "https://dynamodb.eu-west-1.amazonaws.com",
                "region": "eu-west-1",
            },
            "autoContext": {
                "deviceType": {
                    "type": "string",
                    "description": "From CloudFront's device headers.",
                    "default": "Desktop",
                    "evaluateAll": True,
                    "rules": [
                        {
                            "type": "header-value",
                            "header": "cloudfront-is-mobile-viewer",
                            "valueMappings": [mapping("equals", "true", "Phone")],
                        },
                        {
                            "type": "header-value",
                            "header": "user-agent",
                            "valueMappings": [
                                mapping("contains", "Android", "Phone"),
                                mapping("starts-with", "Roku", "TV"),
                                mapping("start-with", "AppleTV", "TV"),
                                mapping("ends-with", "Tablet", "Tablet"),
                                mapping("greater-than", 2, 3),
                            ],
                        },
                    ],
                }
            },
            "filters": [
                {
                    "arn": "arn:aws:personalize:eu-west-1:123456789012:filter/by-category",
                    "condition": "user-required",
                    "autoDynamicFilterValues": {
                        "CATEGORY-1": field("header-value", header="x-category")
                    },
                }
            ],
            "recommenders": {
                "recommend-items": {
                    "for-you": {
                        "name": "For you",
                        "description": "Home page carousel.",
                        "cacheControl": {
                            "syntheticUserSpecified": {"maxAge": 0, "directives": "public"}
                        },
                        "autoContext": {},
                        "filters": [],
                        "inferenceItemMetadata": {
                            "type": "personalize",
                            "itemColumns": ["TITLE", "PRICE"],
                        },
                        "responsePostProcessor": {
                            "type": "lambda",
                            "arn": f"{LAMBDA_ARN}:live",
                            "lookAheadMultiplier": 1.5,
                            "lookAheadMaximumValue": 100,
                        },
                        "experiments": {
                            "home.v2": {
                                "method": "local",
                                "description": "Campaign against recommender and the local model.",
                                "weights": {"campaign": 2, "recommender": 1, "popular": 0},
                                "metrics": {
                                    "clicked": {
                                        "trackExposures": True,
                                        "entityIdKey": "userId",
                                        "valueKey": "details.clicked",
                                    }
                                },
                            },
                            "legacy-evidently": {
                                "method": "evidently",
                                "project": "retail",
                                "metrics": {
                                    "bought": {"entityIdKey": "userId", "valueKey": "value"}
                                },
                            },
                        },
                        "variations": {
                            "campaign": {
                                "type": "personalize-campaign",
                                "arn": "arn:aws:personalize:eu-west-1:123456789012:campaign/up",
                                "filters": [
                                    {
                                        "arn": "arn:aws-cn:personalize:cn-north-1:123456789012:filter/x"
                                    }
                                ],
                                "timeoutMs": 800,
                                "fallback": "popular",
                            },
                            "recommender": {
                                "type": "personalize-recommender",
                                "arn": "arn:aws:personalize:eu-west-1:123456789012:recommender/top-picks",
                                "cacheControl": {},
                                "autoContext": {
                                    "weekday": {
                                        "type": "integer",
                                        "rules": [{"type": "day-of-week"}],
                                    }
                                },
                                "inferenceItemMetadata": {"type": "localdb"},
                            },
                            "popular": {"type": "local", "algorithm": "popularity"},
                        },
                    }
                },
                "related-items": {
                    "similar": {
                        "variations": {
                            "sm": {
                                "type": "sagemaker",
                                "endpointName": "sims-endpoint-2",
                                "region": "us-gov-west-1",
                                "endpointUrl": "https://runtime.sagemaker.us-gov-west-1.amazonaws.com",
                            },
                            "co": {"type": "local", "algorithm": "co-occurrence"},
                        }
                    }
                },
                "rerank-items": {
                    "ranking": {
                        "variations": {
                            "fn": {"type": "lambda", "arn": LAMBDA_ARN},
                            "legacy_fn": {
                                "type": "function",
                                "arn": "arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:rank:7",
                            },
                            "svc": {
                                "type": "http",
                                "url": "https://ranker.internal:8443/rank",
                                "headers": {"x-api-key": "k"},
                            },
                            "affinity": {"type": "local"},
                        }
                    }
                },
            },
            "eventTargets": [
                {
                    "type": "personalize-event-tracker",
                    "name": "personalize",
                    "trackingId": "0b9a3c2e-1111-2222-3333-444455556666",
                    "maxCallsPerSecond": 0.5,
                    "region": "eu-west-1",
                    "endpointUrl": "http://127.0.0.1:9001",
                    "batchSize": 10,
                    "maxAttempts": 5,
                    "maxRecordAgeSeconds": 3600,
                    "deadLetter": {"uri": "s3://p13n-dead-letters/personalize/"},
                },
                {
                    "type": "kinesis-stream",
                    "name": "copy.avro",
                    "streamName": "analytics",
                    "format": "avro",
                },
                {"type": "kinesis-stream", "streamName": "legacy-consumers"},
                {"type": "kinesis-firehose", "streamName": "to-s3"},
                {
                    "type": "http",
                    "url": "http://hooks.internal/events",
                    "headers": {"authorization": "Bearer x"},
                    "secret": "s3cret",
                },
                {
                    "type": "lambda",
                    "functionArn": "arn:aws-cn:lambda:cn-north-1:123456789012:function:sink:$LATEST",
                },
                {
                    "type": "archive",
                    "uri": "s3://p13n-archive/events",
                    "rollSeconds": 300,
                    "rollBytes": 1024,
                    "codec": "deflate",
                },
                {
                    "type": "archive",
                    "name": "local-archive",
                    "uri": "file:///srv/archive",
                    "codec": "null",
                },
                {"type": "interactions"},
                {"type": "evidently", "project": "retail", "region": "eu-west-1"},
            ],
        },
        "events-only": {"eventTargets": [{"type": "interactions"}]},
    },
}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    return Draft202012Validator(schema)  # no format_checker: "format" is never asserted


def errors_of(validator: Draft202012Validator, document: Any) -> list[tuple[str, str]]:
    """Every error as (JSON path, message), sorted: what the config loader reports."""
    return sorted((error.json_path, error.message) for error in validator.iter_errors(document))


DELETE = object()


def patched(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with the value at a slash-separated path replaced (``DELETE`` removes it)."""
    document = copy.deepcopy(MINIMAL)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    node: Any = document
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return document


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _properties(node: Any, where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema under a "properties" keyword, except in "if" conditions (tests, not shapes)."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield f"{where}.properties.{name}", sub
        for key, sub in node.items():
            if key not in ("if", "properties"):
                yield from _properties(sub, f"{where}.{key}")
            elif key == "properties":
                for name, prop in sub.items():
                    yield from _properties(prop, f"{where}.properties.{name}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            yield from _properties(sub, f"{where}[{index}]")


def test_every_property_is_described() -> None:
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    undescribed = [where for where, sub in _properties(schema) if not sub.get("description")]
    assert undescribed == []


def test_every_definition_is_used() -> None:
    text = SCHEMA_PATH.read_text("utf-8")
    definitions = json.loads(text)["$defs"]
    unused = [name for name in definitions if f'"#/$defs/{name}"' not in text]
    assert unused == []


def test_the_three_sample_configs_are_here() -> None:
    assert [p.name for p in SAMPLES] == [
        "sample_auto_context.json",
        "sample_experiment.json",
        "sample_simple.json",
    ]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_project_configs_validate(validator: Draft202012Validator, path: Path) -> None:
    assert errors_of(validator, json.loads(path.read_text("utf-8"))) == []


def test_builtin_default_config_validates(validator: Draft202012Validator) -> None:
    assert errors_of(validator, json.loads(DEFAULT_CONFIG_PATH.read_text("utf-8"))) == []


def test_minimal_config_validates(validator: Draft202012Validator) -> None:
    assert errors_of(validator, MINIMAL) == []


def test_rich_config_validates(validator: Draft202012Validator) -> None:
    assert errors_of(validator, RICH) == []


def test_cors_and_compression_load_into_the_typed_model() -> None:
    config = load_config(RICH)
    assert config.cors.allow_origins == ("https://shop.example.com", "http://localhost:3000")
    assert not config.cors.any_origin and config.cors.max_age_seconds == 600
    assert config.cors.allow_headers == ("content-type", "x-api-key")
    assert (config.compression.minimum_bytes, config.compression.level) == (2048, 6)
    default = load_config({"namespaces": {}})
    assert default.cors.any_origin and default.cors.max_age_seconds == 500
    assert "x-api-key" in default.cors.allow_headers
    assert default.compression.enabled and default.compression.minimum_bytes == 1024


def test_rich_config_covers_every_target_and_variation_type() -> None:
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    namespace = RICH["namespaces"]["retail_eu"]
    target_types = {t["type"] for t in namespace["eventTargets"]}
    variation_types = {
        variation["type"]
        for by_name in namespace["recommenders"].values()
        for recommender in by_name.values()
        for variation in recommender["variations"].values()
    }
    defs = schema["$defs"]
    assert target_types == set(defs["eventTarget"]["properties"]["type"]["enum"])
    assert variation_types == set(defs["variation"]["properties"]["type"]["enum"])
    assert set(RICH) == set(schema["properties"])


def test_an_embedded_stream_validates(validator: Draft202012Validator) -> None:
    document = copy.deepcopy(MINIMAL)
    document["stream"] = {
        "type": "embedded",
        "path": "/tmp/stream.db",
        "shards": 64,
        "retentionHours": 0.5,
        "producer": {"lingerMs": 0, "maxBatchRecords": 100000, "queueSize": 1},
    }
    assert errors_of(validator, document) == []


def test_cache_control_entries_are_each_optional(validator: Draft202012Validator) -> None:
    document = copy.deepcopy(MINIMAL)
    document["cacheControl"] = {"userSpecified": {"maxAge": 5}}
    document["namespaces"]["shop"]["cacheControl"] = {}
    assert errors_of(validator, document) == []


@pytest.mark.parametrize(
    "arn",
    [
        LAMBDA_ARN,
        f"{LAMBDA_ARN}:live",
        f"{LAMBDA_ARN}:42",
        f"{LAMBDA_ARN}:$LATEST",
        "arn:aws-cn:lambda:cn-northwest-1:123456789012:function:f",
        "arn:aws-us-gov:lambda:us-gov-east-1:123456789012:function:f_2",
        "arn:aws:lambda:us-east-1:123456789012:function/rank-items",  # the sample's spelling
    ],
)
def test_real_lambda_arns_are_accepted(validator: Draft202012Validator, arn: str) -> None:
    function = patched(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "function", "arn": arn},
    )
    assert errors_of(validator, function) == []
    target = patched("namespaces/shop/eventTargets/0", {"type": "lambda", "functionArn": arn})
    assert errors_of(validator, target) == []


def test_the_samples_slashed_lambda_arns_are_read_as_lambda_names_them() -> None:
    """The sample's schema asked for ``function/NAME``; Lambda's API takes ``function:NAME``."""
    from schemas.config import load_config

    slashed = LAMBDA_ARN.replace("function:", "function/")
    document = {
        "namespaces": {
            "shop": {
                "recommenders": {
                    "recommend-items": {
                        "for-you": {
                            "variations": {"main": {"type": "function", "arn": slashed}},
                            "responsePostProcessor": {"type": "lambda", "arn": slashed + ":live"},
                        }
                    }
                },
                "eventTargets": [{"type": "lambda", "functionArn": slashed}],
            }
        }
    }
    config = load_config(document)
    shop = config.namespace("shop")
    rec = shop.recommenders["recommend-items"]["for-you"]
    assert rec.variations["main"].options["arn"] == LAMBDA_ARN
    assert rec.response_post_processor is not None
    assert rec.response_post_processor.arn == LAMBDA_ARN + ":live"
    assert shop.event_targets[0].options["functionArn"] == LAMBDA_ARN


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:lambda:us-east-1:123456789012:function/",
        "arn:aws:lambda:us-east-1:1234:function:rank-items",
        "arn:aws:lambda:us-east-1:123456789012:function:",
        "arn:aws:lambda:us-east-1:123456789012:function:a:b:c",
        "arn:aws:lambda:[REGION]:[ACCOUNT]:function:rank-items",
        "arn:azure:lambda:us-east-1:123456789012:function:rank-items",
    ],
)
def test_malformed_lambda_arns_are_rejected(validator: Draft202012Validator, arn: str) -> None:
    document = patched("namespaces/shop/eventTargets/0", {"type": "lambda", "functionArn": arn})
    assert errors_of(validator, document) == [
        (f"{TARGET}.functionArn", f"{arn!r} does not match {LAMBDA_PATTERN}")
    ]


BROKEN = [
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "kafka", "topic": "clicks"},
        [(f"{TARGET}.type", f"'kafka' is not one of {TARGET_TYPES}")],
        id="unknown-target-type",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "personalize-event-tracker", "maxCallsPerSecond": 5},
        [(TARGET, "'trackingId' is a required property")],
        id="missing-tracking-id",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "personalize-event-tracker", "trackingId": "t", "maxCallsPerSecond": 0},
        [(f"{TARGET}.maxCallsPerSecond", "0 is less than or equal to the minimum of 0")],
        id="tracker-rate-zero",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "kinesis-firehose", "streamName": "s", "format": "avro"},
        [(TARGET, "Unevaluated properties are not allowed ('format' was unexpected)")],
        id="key-of-another-target-type",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "kinesis-stream", "streamName": "bad name"},
        [(f"{TARGET}.streamName", "'bad name' does not match '^[a-zA-Z0-9_.-]{1,128}$'")],
        id="kinesis-stream-name",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "archive", "uri": "/srv/archive"},
        [
            (
                f"{TARGET}.uri",
                "'/srv/archive' does not match "
                "'^(file://.+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?)$'",
            )
        ],
        id="archive-uri-without-scheme",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "archive", "codec": "snappy", "rollBytes": 10},
        [
            (f"{TARGET}.codec", "'snappy' is not one of ['null', 'deflate']"),
            (f"{TARGET}.rollBytes", "10 is less than the minimum of 1024"),
        ],
        id="archive-codec-and-roll-size",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "http", "url": "ftp://x", "headers": {"x-n": 1}},
        [
            (f"{TARGET}.headers['x-n']", "1 is not of type 'string'"),
            (f"{TARGET}.url", "'ftp://x' does not match '^https?://\\\\S+$'"),
        ],
        id="http-target-url-and-header",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "evidently"},
        [(TARGET, "'project' is a required property")],
        id="evidently-target-project",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "interactions", "name": "a b", "batchSize": 0, "maxAttempts": 101},
        [
            (f"{TARGET}.batchSize", "0 is less than the minimum of 1"),
            (f"{TARGET}.maxAttempts", "101 is greater than the maximum of 100"),
            (f"{TARGET}.name", "'a b' does not match '^[a-zA-Z0-9_.-]+$'"),
        ],
        id="common-target-settings",
    ),
    pytest.param(
        "namespaces/shop/eventTargets/0",
        {"type": "interactions", "deadLetter": {"url": "s3://b/p"}},
        [
            (f"{TARGET}.deadLetter", "'uri' is a required property"),
            (
                f"{TARGET}.deadLetter",
                "Additional properties are not allowed ('url' was unexpected)",
            ),
        ],
        id="dead-letter-misspelt",
    ),
    pytest.param(
        "namespaces/shop/autoContext/deviceType/rules/0/valueMappings/0/operator",
        "matches",
        [(f"{FIELD}.rules[0].valueMappings[0].operator", f"'matches' is not one of {OPERATORS}")],
        id="bad-operator",
    ),
    pytest.param(
        "namespaces/shop/autoContext/deviceType/rules/0/valueMappings/0",
        ["equals", "true", "Phone"],
        [
            (
                f"{FIELD}.rules[0].valueMappings[0]",
                "['equals', 'true', 'Phone'] is not of type 'object'",
            )
        ],
        id="mapping-given-as-array",
    ),
    pytest.param(
        "namespaces/shop/autoContext/deviceType/rules/0/valueMappings/0",
        {"operator": "equals", "value": True, "mapTo": "Phone", "map": "x"},
        [
            (
                f"{FIELD}.rules[0].valueMappings[0]",
                "Additional properties are not allowed ('map' was unexpected)",
            ),
            (f"{FIELD}.rules[0].valueMappings[0].value", "True is not of type 'string', 'number'"),
        ],
        id="mapping-bad-value-and-key",
    ),
    pytest.param(
        "namespaces/shop/autoContext/deviceType/rules/0",
        {"type": "header-value"},
        [(f"{FIELD}.rules[0]", "'header' is a required property")],
        id="header-rule-without-header",
    ),
    pytest.param(
        "namespaces/shop/autoContext/deviceType/rules/0",
        {"type": "hour-of-day", "header": "date"},
        [(f"{FIELD}.rules[0]", "Unevaluated properties are not allowed ('header' was unexpected)")],
        id="clock-rule-with-header",
    ),
    pytest.param(
        "namespaces/shop/autoContext/deviceType/rules/0",
        {"type": "cookie-value", "header": "x"},
        [
            (
                f"{FIELD}.rules[0].type",
                "'cookie-value' is not one of "
                "['header-value', 'hour-of-day', 'day-of-week', 'season-of-year']",
            )
        ],
        id="unknown-rule-type",
    ),
    pytest.param(
        "namespaces/shop/autoContext/deviceType/rules",
        DELETE,
        [(FIELD, "'rules' is a required property")],
        id="field-without-rules",
    ),
    pytest.param(
        "namespaces/shop/autoContext/device-type",
        field("day-of-week"),
        [(f"{NS}.autoContext", "'device-type' does not match '^[a-zA-Z0-9_]+$'")],
        id="context-field-name",
    ),
    pytest.param(
        "auth",
        {"apiKeys": [{"id": "web", "sha256": SHA.upper()}]},
        [("$.auth.apiKeys[0].sha256", f"'{SHA.upper()}' does not match '^[0-9a-f]{{64}}$'")],
        id="bad-sha256",
    ),
    pytest.param(
        "auth",
        {"apiKeys": [{"id": "web"}], "rateLimit": {"requestsPerSecond": 0, "burst": 0}},
        [
            ("$.auth.apiKeys[0]", "'sha256' is a required property"),
            ("$.auth.rateLimit.burst", "0 is less than the minimum of 1"),
            ("$.auth.rateLimit.requestsPerSecond", "0 is less than or equal to the minimum of 0"),
        ],
        id="auth-key-and-rate-limit",
    ),
    pytest.param(
        "auth",
        {"keys": []},
        [("$.auth", "Additional properties are not allowed ('keys' was unexpected)")],
        id="auth-unknown-key",
    ),
    pytest.param(
        "stream",
        {"type": "embedded", "shards": 0},
        [("$.stream.shards", "0 is less than the minimum of 1")],
        id="stream-shards-0",
    ),
    pytest.param(
        "stream",
        {"type": "embedded", "shards": 65, "streamName": "s"},
        [
            ("$.stream", "Unevaluated properties are not allowed ('streamName' was unexpected)"),
            ("$.stream.shards", "65 is greater than the maximum of 64"),
        ],
        id="stream-embedded-with-kinesis-key",
    ),
    pytest.param(
        "stream",
        {"type": "kinesis", "region": "eu-west-1"},
        [("$.stream", "'streamName' is a required property")],
        id="stream-kinesis-without-name",
    ),
    pytest.param(
        "stream",
        {"type": "kafka"},
        [("$.stream.type", "'kafka' is not one of ['embedded', 'kinesis']")],
        id="stream-unknown-type",
    ),
    pytest.param(
        "stream",
        {"type": "embedded", "producer": {"lingerMs": 2000, "batchSize": 5}},
        [
            (
                "$.stream.producer",
                "Additional properties are not allowed ('batchSize' was unexpected)",
            ),
            ("$.stream.producer.lingerMs", "2000 is greater than the maximum of 1000"),
        ],
        id="producer-settings",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "lambda", "arn": "arn:aws:lambda:us-east-1:123456789012:function/a/b"},
        [
            (
                f"{VAR}.arn",
                "'arn:aws:lambda:us-east-1:123456789012:function/a/b' does not match "
                f"{LAMBDA_PATTERN}",
            )
        ],
        id="lambda-arn-with-two-slashes",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "function"},
        [(VAR, "'arn' is a required property")],
        id="function-variation-without-arn",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "personalize-campaign", "arn": "arn:aws:personalize:eu-west-1:1:recommender/r"},
        [
            (
                f"{VAR}.arn",
                "'arn:aws:personalize:eu-west-1:1:recommender/r' does not match "
                "'^arn:aws[a-z-]*:personalize:[^:]*:[^:]*:campaign/.+$'",
            )
        ],
        id="campaign-variation-with-recommender-arn",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "sagemaker", "endpointName": "e", "url": "http://x"},
        [(VAR, "Unevaluated properties are not allowed ('url' was unexpected)")],
        id="key-of-another-variation-type",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "http", "url": "ranker.internal/rank"},
        [(f"{VAR}.url", "'ranker.internal/rank' does not match '^https?://\\\\S+$'")],
        id="http-variation-url",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "local", "algorithm": "random", "timeoutMs": 0, "fallback": "other one"},
        [
            (
                f"{VAR}.algorithm",
                "'random' is not one of ['popularity', 'co-occurrence', 'affinity']",
            ),
            (f"{VAR}.fallback", "'other one' does not match '^[a-zA-Z0-9_-]+$'"),
            (f"{VAR}.timeoutMs", "0 is less than the minimum of 1"),
        ],
        id="local-variation-settings",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations/main",
        {"type": "personalize", "arn": "x"},
        [(f"{VAR}.type", f"'personalize' is not one of {VARIATION_TYPES}")],
        id="unknown-variation-type",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/variations",
        {},
        [(f"{REC}.variations", "{} should be non-empty")],
        id="no-variations",
    ),
    pytest.param(
        "namespaces/shop/recommenders/suggest-items",
        {"x": {"variations": {"main": {"type": "local"}}}},
        [
            (
                f"{NS}.recommenders",
                "Additional properties are not allowed ('suggest-items' was unexpected)",
            )
        ],
        id="unknown-recommender-action",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/experiments",
        {"exp": {"method": "evidently"}},
        [(f"{REC}.experiments.exp", "'project' is a required property")],
        id="evidently-experiment-without-project",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/experiments",
        {
            "exp": {
                "method": "local",
                "weights": {"main": -1},
                "metrics": {"m": {"entityIdKey": "u"}},
            }
        },
        [
            (f"{REC}.experiments.exp.metrics.m", "'valueKey' is a required property"),
            (f"{REC}.experiments.exp.weights.main", "-1 is less than the minimum of 0"),
        ],
        id="experiment-weight-and-metric",
    ),
    pytest.param(
        "namespaces/shop/recommenders/recommend-items/for-you/responsePostProcessor",
        {"type": "lambda", "arn": LAMBDA_ARN, "lookAheadMultiplier": 0.5},
        [
            (
                f"{REC}.responsePostProcessor.lookAheadMultiplier",
                "0.5 is less than the minimum of 1",
            )
        ],
        id="post-processor-look-ahead",
    ),
    pytest.param(
        "namespaces/shop",
        {"name": "Shop"},
        [(NS, "'recommenders' is a required property")],
        id="namespace-without-recommenders-or-targets",
    ),
    pytest.param(
        "namespaces/my shop",
        {"eventTargets": []},
        [("$.namespaces", "'my shop' does not match '^[a-zA-Z0-9_-]+$'")],
        id="namespace-key",
    ),
    pytest.param(
        "namespaces/shop/deadletter",
        {"uri": "s3://b"},
        [(NS, "Additional properties are not allowed ('deadletter' was unexpected)")],
        id="namespace-unknown-key",
    ),
    pytest.param(
        "namespaces/shop/filters",
        [{"arn": "arn:aws:personalize:eu-west-1:123456789012:campaign/c", "condition": "always"}],
        [
            (
                f"{NS}.filters[0].arn",
                "'arn:aws:personalize:eu-west-1:123456789012:campaign/c' does not match "
                "'^arn:aws[a-z-]*:personalize:[^:]*:[^:]*:filter/.+$'",
            ),
            (f"{NS}.filters[0].condition", "'always' is not one of ['user-required']"),
        ],
        id="filter-arn-and-condition",
    ),
    pytest.param(
        "namespaces/shop/inferenceItemMetadata",
        {"type": "localdb", "syncInterval": -1, "tableName": "t"},
        [
            (
                f"{NS}.inferenceItemMetadata",
                "Unevaluated properties are not allowed ('tableName' was unexpected)",
            ),
            (f"{NS}.inferenceItemMetadata.syncInterval", "-1 is less than the minimum of 0"),
        ],
        id="item-metadata-localdb",
    ),
    pytest.param(
        "namespaces/shop/inferenceItemMetadata",
        {"type": "redis"},
        [
            (
                f"{NS}.inferenceItemMetadata.type",
                "'redis' is not one of ['personalize', 'localdb', 'dynamodb']",
            )
        ],
        id="item-metadata-unknown-type",
    ),
    pytest.param(
        "namespaces/shop/cacheControl",
        {"userSpecified": {"maxage": 10}, "noUserSpecified": {"maxAge": -1}},
        [
            (f"{NS}.cacheControl.noUserSpecified.maxAge", "-1 is less than the minimum of 0"),
            (
                f"{NS}.cacheControl.userSpecified",
                "Additional properties are not allowed ('maxage' was unexpected)",
            ),
        ],
        id="cache-control-entries",
    ),
    pytest.param(
        "namespace",
        {},
        [("$", "Additional properties are not allowed ('namespace' was unexpected)")],
        id="root-unknown-key",
    ),
    pytest.param(
        "namespaces",
        DELETE,
        [("$", "'namespaces' is a required property")],
        id="root-without-namespaces",
    ),
    pytest.param(
        "partitionKey",
        "deviceId",
        [("$.partitionKey", "'deviceId' is not one of ['sessionId', 'userId']")],
        id="partition-key",
    ),
    pytest.param(
        "limits",
        {"maxBodyBytes": 10485761},
        [("$.limits.maxBodyBytes", "10485761 is greater than the maximum of 10485760")],
        id="max-body-bytes",
    ),
    pytest.param(
        "experimentStore",
        {"type": "postgres"},
        [("$.experimentStore.type", "'postgres' is not one of ['sqlite', 'dynamodb']")],
        id="experiment-store-type",
    ),
    pytest.param(
        "consumer",
        {"pollIntervalMs": 0, "batchSize": 10001},
        [
            ("$.consumer.batchSize", "10001 is greater than the maximum of 10000"),
            ("$.consumer.pollIntervalMs", "0 is less than the minimum of 1"),
        ],
        id="consumer-settings",
    ),
    pytest.param(
        "cors",
        {"allowOrigins": ["https://shop.example.com/path"], "maxAgeSeconds": -1},
        [
            (
                "$.cors.allowOrigins[0]",
                r"'https://shop.example.com/path' does not match '^(\\*|https?://[^/?#\\s*]+)$'",
            ),
            ("$.cors.maxAgeSeconds", "-1 is less than the minimum of 0"),
        ],
        id="cors",
    ),
    pytest.param(
        "compression",
        {"level": 0},
        [("$.compression.level", "0 is less than the minimum of 1")],
        id="compression-level",
    ),
]


@pytest.mark.parametrize(("path", "value", "expected"), BROKEN)
def test_broken_config_names_path_and_reason(
    validator: Draft202012Validator, path: str, value: Any, expected: list[tuple[str, str]]
) -> None:
    assert errors_of(validator, patched(path, value)) == expected
