"""``personalize-event-tracker``: interactions to an Amazon Personalize event tracker (PutEvents).

Personalize's quota is counted in calls (about 1,000 PutEvents per second per dataset group),
so events are packed: consecutive records of one partition key that share a ``sessionId`` and
``userId`` go in one call of up to 10 events. Each partition key is a *lane*: its calls are made
one after another, in stream order, while lanes run in parallel. Experiment conversions are not
sent here; they belong to experiment tracking.

Outcomes: a throttled or failed call (retryable) fails its records, and the lane's later records
are ``Deferred`` unsent. A packed call rejected as invalid is split and each record sent alone,
so only the record Personalize refuses is dead-lettered, not its neighbours. An unknown tracker
or missing permission is not about any record: it fails the rest of the batch without more calls.

Pacing (``maxCallsPerSecond``): never more than that many calls in any second *as the service
counts them*. A call holds a slot from just before its request is written until its answer is
in; a slot is free again one second after that. Every call that can arrive in the same second
as a new one is then still holding its slot, whatever the delays on either side, so the quota
needs no safety margin and is used almost fully. Requests go out through
``personalize_wire`` (built and signed by us; boto3's client costs too much CPU per call).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from consumers.base import Delivery, Failures
from consumers.targets import TargetContext
from consumers.targets.jsonshape import event
from consumers.targets.outcomes import DESTINATION_ERRORS, Outcomes
from consumers.targets.personalize_wire import PutEventsClient, epoch_seconds
from schemas.codec import INTERACTION
from schemas.config import TargetConfig
from schemas.errors import P13nError, RetryableError, Unavailable
from streams.pacing import CallQuota

MAX_EVENTS_PER_CALL = 10  # PutEvents' eventList limit
LANE_WORKERS = 8


@dataclass
class _Call:
    """One PutEvents: ``(batch index, that record's events)`` pieces of one session and user."""

    session_id: str
    user_id: str | None
    pieces: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(events) for _, events in self.pieces)


class PersonalizeTarget:
    @dataclass(frozen=True)
    class Settings:
        tracking_id: str
        max_calls_per_second: float | None = None

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> PersonalizeTarget.Settings:
            return cls(options["trackingId"], options.get("maxCallsPerSecond"))

    kinds = frozenset({INTERACTION})
    calls_aws = True

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        self._config = config
        settings = self.Settings.parse(config.options, config.group)
        self._tracking_id = settings.tracking_id
        self._rate = settings.max_calls_per_second
        self._what = f"personalize PutEvents ({config.group})"
        self._client: PutEventsClient | None = None
        self._pool: ThreadPoolExecutor | None = None

    def open(self) -> None:
        quota = CallQuota(max(1, int(self._rate))) if self._rate is not None else None
        client = PutEventsClient(self._config, pace=quota.call if quota is not None else None)
        client.open()
        self._client = client
        self._pool = ThreadPoolExecutor(LANE_WORKERS, thread_name_prefix=f"p13n-{self.name}")

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._client is None or self._pool is None:
            raise Unavailable(f"{self._what}: target is not open")
        lanes: dict[str, list[int]] = {}
        for index, delivery in enumerate(batch):
            if delivery.kind == INTERACTION and delivery.fields.get("eventList"):
                lanes.setdefault(delivery.record.partition_key, []).append(index)
        # One Outcomes for every lane: a retried call holds its key's later records back, and a
        # missing tracker or permission (DESTINATION_ERRORS) stops every lane.
        outcomes = Outcomes(batch)
        futures = [
            self._pool.submit(self._deliver_lane, _pack(batch, indices), outcomes)
            for indices in lanes.values()
        ]
        for future in futures:
            future.result()
        return outcomes.failures

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _deliver_lane(self, calls: list[_Call], outcomes: Outcomes) -> None:
        """One partition key's calls, strictly in order; their outcomes go to ``outcomes``."""
        queue = deque(calls)
        while queue:
            call = queue.popleft()
            call.pieces = [(i, events) for i, events in call.pieces if outcomes.sendable(i)]
            if not call.pieces:
                continue  # every record in it failed already, waits, or the batch ended
            error = self._put(call)
            if error is None:
                continue
            records = list(dict.fromkeys(i for i, _ in call.pieces))
            if isinstance(error, (RetryableError, *DESTINATION_ERRORS)) or len(records) == 1:
                outcomes.fail_call(records, error, retry_ends_batch=False)
                continue
            # Invalid input somewhere in a packed call: send each record alone to find it.
            alone = [_Call(call.session_id, call.user_id, [piece]) for piece in call.pieces]
            queue.extendleft(reversed(alone))

    def _put(self, call: _Call) -> P13nError | None:
        if self._client is None:
            return Unavailable(f"{self._what}: target is not open")
        params: dict[str, Any] = {
            "trackingId": self._tracking_id,
            "sessionId": call.session_id,
            "eventList": [event for _, events in call.pieces for event in events],
        }
        if call.user_id is not None:
            params["userId"] = call.user_id
        try:
            self._client.put(params)
        except P13nError as exc:
            return exc
        return None


def _pack(batch: Sequence[Delivery], indices: list[int]) -> list[_Call]:
    """One lane's records as calls, in order: a record's events stay in one call when they fit,
    and a call holds one ``(sessionId, userId)``."""
    calls: list[_Call] = []
    for index in indices:
        record = batch[index].fields
        session_id, user_id = record["sessionId"], record.get("userId")
        events = [
            event(record, n, fields, sent_at=epoch_seconds)
            for n, fields in enumerate(record["eventList"])
        ]
        for start in range(0, len(events), MAX_EVENTS_PER_CALL):
            chunk = events[start : start + MAX_EVENTS_PER_CALL]
            last = calls[-1] if calls else None
            if (
                last is None
                or (last.session_id, last.user_id) != (session_id, user_id)
                or last.size + len(chunk) > MAX_EVENTS_PER_CALL
            ):
                last = _Call(session_id, user_id)
                calls.append(last)
            last.pieces.append((index, chunk))
    return calls
