"""Event targets, one module each; this is the one place their types are registered.

Every target class takes ``(config: TargetConfig, context: TargetContext)`` and implements
``consumers.base.Target``. Adding a target type is one module plus one line in ``REGISTRY``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from consumers.base import Target
from schemas.codec import Codec
from schemas.config import Config, TargetConfig
from schemas.errors import ConfigError


@dataclass(frozen=True)
class TargetContext:
    """What a target may need beyond its own settings; nothing here is open yet."""

    config: Config
    codec: Codec


# type → "module:Class", imported only when a config uses the type.
REGISTRY: Mapping[str, str] = MappingProxyType(
    {
        "interactions": "consumers.targets.interactions:InteractionsTarget",
        "personalize-event-tracker": "consumers.targets.personalize:PersonalizeTarget",
        "kinesis-stream": "consumers.targets.kinesis_stream:KinesisStreamTarget",
        "kinesis-firehose": "consumers.targets.firehose:FirehoseTarget",
        "http": "consumers.targets.http:HttpTarget",
        "lambda": "consumers.targets.lambda_function:LambdaTarget",
        "archive": "consumers.targets.archive:ArchiveTarget",
        "evidently": "consumers.targets.evidently:EvidentlyTarget",
        "experiments": "consumers.targets.experiments:ExperimentsTarget",
    }
)

# The types that call AWS: without credentials their groups pause before they start.
USES_AWS = frozenset(
    {"personalize-event-tracker", "kinesis-stream", "kinesis-firehose", "lambda", "evidently"}
)


def aws_client(service: str, config: TargetConfig, **options: Any) -> Any:
    """A boto3 client for a target, built in its ``open``. One attempt per call: the runner owns
    retries, and botocore retrying underneath would multiply the two layers."""
    from aws.clients import client

    return client(
        service, region=config.region, endpoint_url=config.endpoint_url, max_attempts=1, **options
    )


def build_target(config: TargetConfig, context: TargetContext) -> Target:
    where = REGISTRY.get(config.type)
    if where is None:
        raise ConfigError(f"unknown event target type '{config.type}' ({config.group})")
    module_name, class_name = where.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    target: Target = cls(config, context)
    return target
