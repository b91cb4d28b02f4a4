"""Event targets, one module each; this is the one place their types are registered.

Every target class takes ``(config: TargetConfig, context: TargetContext)`` and implements
``consumers.base.Target``. Adding a target type is one module plus one line in ``REGISTRY``
(a ``schemas.registry.Registry``). A target class may declare its typed settings as
``Settings`` (see ``schemas.registry``); it parses them once, when it is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consumers.base import Target
from schemas.codec import Codec
from schemas.config import Config, TargetConfig
from schemas.registry import Registry, load


@dataclass(frozen=True)
class TargetContext:
    """What a target may need beyond its own settings; nothing here is open yet."""

    config: Config
    codec: Codec


# type → "module:Class", imported only when a config uses the type.
REGISTRY: Mapping[str, str] = Registry(
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
    },
    unknown="unknown event target type '{name}' ({group})",
)


def aws_client(service: str, config: TargetConfig, **options: Any) -> Any:
    """A boto3 client for a target, built in its ``open``. One attempt per call: the runner owns
    retries, and botocore retrying underneath would multiply the two layers."""
    from aws.clients import client

    return client(
        service, region=config.region, endpoint_url=config.endpoint_url, max_attempts=1, **options
    )


def build_target(config: TargetConfig, context: TargetContext) -> Target:
    # REGISTRY read at call time, as a mapping: tests register types of their own in its place.
    unknown = f"unknown event target type '{config.type}' ({config.group})"
    cls = load(REGISTRY, config.type, unknown)
    target: Target = cls(config, context)
    return target
