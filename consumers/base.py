"""The consumer contracts: what a target is given, what it reports, what the runner promises.

A *consumer group* delivers one stream to one target; it is named ``{namespace}/{target}`` and
has a checkpoint per shard of its own, so one slow or broken target lags alone.

The runner (``consumers.runner``) reads each shard in order, decodes records, keeps those of
the target's namespace and hands them to ``Target.deliver`` in batches. For each record the
target reports one outcome:

* delivered — nothing is returned for it;
* retry — a ``RetryableError`` (throttling, 5xx, timeouts, connection errors): the runner sends
  it again with exponential backoff and full jitter, bounded by ``maxAttempts`` and
  ``maxRecordAgeSeconds``, then dead-letters it;
* failed — a ``PermanentError`` (validation): dead-lettered at once with the reason and the
  original bytes, then skipped.

A target may raise instead of returning failures; the error then applies to every record of
the batch. Targets never sleep and never retry by themselves.

Ordering: records reach ``deliver`` in stream order per shard, so one partition key's records
arrive in the order they were written. When a record fails with *retry*, a target must report
``Deferred`` for later records of the same partition key in that batch that it has not yet
sent, so a retried record is never overtaken by its successor. The runner re-sends the
failed subset in the original order; a deferral does not count as an attempt.

Delivery is at least once: the checkpoint passes a record only after it is settled (delivered
or dead-lettered); after a crash, the unsettled tail of the last batch is delivered again.
Stores of our own are idempotent by record or event id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from schemas.errors import P13nError, RetryableError
from streams.base import UserRecord


class Deferred(RetryableError):
    """Not sent: an earlier record of the same partition key is being retried."""

    default_code = "Deferred"

    def __init__(self, message: str = "waiting for an earlier record of the same key") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded stream record on its way to a target."""

    record: UserRecord  # where it was read, its partition key and its original bytes
    kind: str  # schemas.codec.INTERACTION or schemas.codec.EXPOSURE
    fields: Mapping[str, Any]
    replay: bool = False  # sent again by `p13n replay`, not read live from the stream


# Index into the delivered batch → why that record was not delivered.
Failures = Mapping[int, P13nError]


class Target(Protocol):
    """Delivers batches of records to one destination.

    ``open`` is called once before the first batch (clients are built there, not in
    ``__init__``); ``close`` once after the last, also after errors.
    """

    name: str
    kinds: frozenset[str]  # which record kinds it takes (schemas.codec.INTERACTION, EXPOSURE)

    def open(self) -> None: ...

    def deliver(self, batch: Sequence[Delivery]) -> Failures: ...

    def close(self) -> None: ...


@runtime_checkable
class CallsAws(Protocol):
    """A target that may call AWS says so: without credentials its group pauses before it
    starts, rather than failing every batch. ``calls_aws`` may follow its settings (the
    archive calls AWS only for an ``s3://`` URI)."""

    calls_aws: bool


# What a consumer group can be doing (``consumers.supervisor``, ``/readyz``,
# ``p13n_consumer_state``): not running yet; waiting for another process's lock; delivering;
# paused on an operator error; being rebuilt after an outage or a crash; stopped.
GROUP_STATES = ("starting", "standby", "running", "paused", "restarting", "stopped")
