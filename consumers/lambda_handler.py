"""The consumer as an AWS Lambda function: one Kinesis event source mapping per event target.

Contract of ``handler(event, context)``:

* Environment. ``P13N_TARGET`` names the one target this function delivers to (``name``, or
  ``namespace/name`` when the name is not unique); ``P13N_CONFIG`` is the config, a file path
  or ``appconfig://APPLICATION/ENVIRONMENT/PROFILE`` (the AppConfig Lambda extension). Both are
  required.
* Cold start. On a container's first invocation the config is loaded and validated, and the
  target built and opened — once; later invocations reuse them, so a config change reaches a
  function with its next container (redeploy to force it). Anything failing there raises, and
  the mapping retries the whole batch.
* Event. The mapping's batch: records of one shard in stream order, ``kinesis.data`` in
  base64, plain or a KPL aggregate (unpacked here; its user records are numbered by
  sub-sequence). ``eventID`` is ``<shard id>:<sequence number>``.
* Processing is the runner's (``GroupConsumer.settle_some``): decode, keep the target's
  namespace and record kinds, deliver, retry retryable failures a few times with a short
  backoff (``ATTEMPTS``, ``MAX_DELAY``; the mapping retries too), dead-letter permanent
  failures and undecodable records to the target's dead-letter store (``s3://`` in Lambda).
* Result, for a mapping with ``FunctionResponseTypes: [ReportBatchItemFailures]``:
  ``{"batchItemFailures": []}`` when every record is settled, else
  ``{"batchItemFailures": [{"itemIdentifier": SEQ}]}`` with SEQ the sequence number of the
  first Kinesis record holding a user record still unsettled. Every record before SEQ is
  settled; the mapping retries from SEQ, so the records after it are delivered again (at
  least once). A retryable failure is dead-lettered here only once older than the target's
  ``maxRecordAgeSeconds``; bound retries with the mapping's ``MaximumRetryAttempts`` and
  ``MaximumRecordAgeInSeconds`` (and its on-failure destination).
* Observability. Powertools ``Logger`` (service ``p13n-consumer``) and ``Metrics``
  (namespace ``p13n``, dimension ``group``): ``Delivered``, ``DeadLettered`` and ``Failed``
  (user records left to the mapping) per invocation; ``InvocationFailed`` when the handler
  raised (the whole batch is retried).

The target is never closed: the container is frozen or discarded with it open.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from consumers.runner import GroupConsumer
from consumers.supervisor import ConsumerSet
from schemas.config import Config
from schemas.errors import ConfigError
from schemas.sources import load_from, source_for
from streams.aggregation import unpack
from streams.base import Position, Shard, ShardCursor, UserRecord

SERVICE = "p13n-consumer"
ATTEMPTS = 3  # at most, per user record and invocation
MAX_DELAY = 0.5  # seconds between attempts, at most

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="p13n", service=SERVICE)


class _MappingReads:
    """Reader and checkpoint store of the handler's ``GroupConsumer``: the event source mapping
    reads the shards and keeps the positions, so neither is ever called."""

    def list_shards(self) -> list[Shard]:
        raise RuntimeError("the event source mapping reads the stream; the handler never polls")

    def open(
        self, shard_id: str, after: Position | None = None, *, at_end: bool = False
    ) -> ShardCursor:
        raise RuntimeError("the event source mapping reads the stream; the handler never polls")

    def load(self, group: str, shard_id: str) -> Position | None:
        raise RuntimeError(
            "the event source mapping keeps the positions; the handler never checkpoints"
        )

    def save(self, group: str, shard_id: str, position: Position) -> None:
        raise RuntimeError(
            "the event source mapping keeps the positions; the handler never checkpoints"
        )

    def close(self) -> None:
        pass


def user_records(event: Mapping[str, Any]) -> list[tuple[str, list[UserRecord]]]:
    """Each Kinesis record of the event as ``(sequence number, its user records)``, in order."""
    out: list[tuple[str, list[UserRecord]]] = []
    for item in event.get("Records", []):
        kinesis = item["kinesis"]
        sequence = str(kinesis["sequenceNumber"])
        shard_id = str(item.get("eventID", "")).partition(":")[0]
        arrival_ms = int(float(kinesis.get("approximateArrivalTimestamp", 0)) * 1000)
        try:
            data = base64.b64decode(kinesis["data"], validate=True)
        except (binascii.Error, ValueError):
            data = str(kinesis["data"]).encode()  # not ours: dead-lettered as it came
        parts = unpack(data) or [(kinesis["partitionKey"], None, data)]
        records = [
            UserRecord(shard_id, sequence, sub, key, body, arrival_ms, explicit)
            for sub, (key, explicit, body) in enumerate(parts)
        ]
        out.append((sequence, records))
    return out


class LambdaConsumer:
    """One target's consumer in a Lambda container: settles each event's records."""

    def __init__(self, consumer: GroupConsumer) -> None:
        self.consumer = consumer

    @classmethod
    def build(cls, config: Config, target: str) -> LambdaConsumer:
        """Build and open the target named ``target`` (``name`` or ``namespace/name``)."""
        mapping = _MappingReads()
        consumers = ConsumerSet(
            config, targets=[target], reader=lambda c: mapping, checkpoints=lambda c: mapping
        )
        if len(consumers.targets) != 1:
            groups = ", ".join(t.group for t in consumers.targets)
            raise ConfigError(f"P13N_TARGET '{target}' names several targets ({groups})")
        consumer = consumers.build(consumers.targets[0])
        policy = consumer.policy
        consumer.policy = replace(
            policy,
            max_attempts=min(policy.max_attempts, ATTEMPTS),
            max_delay=min(policy.max_delay, MAX_DELAY),
        )
        consumer.target.open()
        return cls(consumer)

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        batch = user_records(event)
        records = [record for _, group in batch for record in group]
        settled = self.consumer.settle_some(records)
        left = {record.sequence_number for record in settled.unsettled}
        first = next((sequence for sequence, _ in batch if sequence in left), None)
        group = self.consumer.group
        metrics.add_dimension(name="group", value=group)
        metrics.add_metric(name="Delivered", unit=MetricUnit.Count, value=settled.delivered)
        metrics.add_metric(name="DeadLettered", unit=MetricUnit.Count, value=settled.dead_lettered)
        metrics.add_metric(name="Failed", unit=MetricUnit.Count, value=len(settled.unsettled))
        logger.info(
            "batch settled",
            extra={
                "group": group,
                "kinesis_records": len(batch),
                "user_records": len(records),
                "delivered": settled.delivered,
                "dead_lettered": settled.dead_lettered,
                "unsettled": len(settled.unsettled),
                "retry_from": first,
            },
        )
        failures = [] if first is None else [{"itemIdentifier": first}]
        return {"batchItemFailures": failures}


# What a container keeps between invocations: the consumer per (config, target), built on the
# first invocation that needs it. Module state on purpose: it is how Lambda reuses containers.
_CONTAINER: dict[tuple[str, str], LambdaConsumer] = {}


def container_consumer(environ: Mapping[str, str] = os.environ) -> LambdaConsumer:
    """The container's consumer, built on first use from ``P13N_CONFIG`` and ``P13N_TARGET``."""
    spec = environ.get("P13N_CONFIG", "")
    target = environ.get("P13N_TARGET", "")
    if not spec or not target:
        raise ConfigError("the consumer function needs P13N_CONFIG and P13N_TARGET")
    built = _CONTAINER.get((spec, target))
    if built is None:
        config = load_from(source_for(spec))
        logger.info("cold start", extra={"config": config.summary(), "target": target})
        built = _CONTAINER[(spec, target)] = LambdaConsumer.build(config, target)
    return built


def reset(close: bool = True) -> None:
    """Forget the container's consumers, closing their targets (tests; a new container)."""
    built: Sequence[LambdaConsumer] = list(_CONTAINER.values())
    _CONTAINER.clear()
    if close:
        for consumer in built:
            consumer.consumer.target.close()


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        return container_consumer().handle(event)
    except Exception:  # the mapping retries the whole batch; count it, raise it
        metrics.add_metric(name="InvocationFailed", unit=MetricUnit.Count, value=1)
        raise
