"""Per-record outcomes of one batch sent in several calls, with the ordering rule applied.

The one ordering mechanism of every target that sends a batch in several calls (kinesis-stream,
kinesis-firehose, http, lambda, personalize-event-tracker, evidently). Besides the rule of
``consumers.base`` (once a record fails with *retry*, its partition key's later records are not
sent and are ``Deferred``), one more: a failed *call* is about the
destination, not about its records, so it ends the batch. After a retryable one (throttled,
unreachable, timing out) the records not yet sent are ``Deferred`` — they were never tried, so
the runner counts no attempt for them, and the destination is not hit again at once. After a
missing or forbidden destination, every record not yet sent fails with that error too.

A target whose calls are independent per partition key (personalize-event-tracker's lanes)
passes ``retry_ends_batch=False``: a retryable call then holds only its records' keys. Lanes of
distinct keys may share one ``Outcomes`` from several threads: each touches only its own
records and keys, and ending the batch is one assignment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from consumers.base import Deferred, Delivery
from schemas.errors import Forbidden, NotFound, P13nError, RetryableError

# Errors about the destination (its name, our permissions), never about one record.
DESTINATION_ERRORS = (NotFound, Forbidden)


class Outcomes:
    def __init__(self, batch: Sequence[Delivery]) -> None:
        self._keys = [delivery.record.partition_key for delivery in batch]
        self.failures: dict[int, P13nError] = {}
        self._held: dict[str, int] = {}  # partition key → its record being retried
        self._ended: P13nError | None = None

    def sendable(self, index: int) -> bool:
        """Whether record ``index`` may be sent now; when not, its outcome is recorded."""
        if index in self.failures:
            return False
        if self._ended is not None:
            self.failures[index] = self._ended
            return False
        held = self._held.get(self._keys[index])
        if held is not None:
            self.failures[index] = Deferred(f"waiting for batch record {held} of the same key")
            return False
        return True

    def fail(self, index: int, error: P13nError) -> None:
        """Record ``index`` was sent (or refused before sending) and failed."""
        self.failures[index] = error
        if isinstance(error, RetryableError):
            self._held.setdefault(self._keys[index], index)

    def fail_call(
        self, indices: Iterable[int], error: P13nError, *, retry_ends_batch: bool = True
    ) -> None:
        """A whole call failed: its records take ``error``, and it may end the batch."""
        for index in indices:
            self.fail(index, error)
        if isinstance(error, RetryableError):
            if not retry_ends_batch:
                return
            self._ended = Deferred(f"not sent after a failed call: {error.message}")
        elif isinstance(error, DESTINATION_ERRORS):
            self._ended = error

    def chunks(
        self,
        indices: Iterable[int],
        *,
        max_records: int | None = None,
        max_bytes: int | None = None,
        size: Callable[[int], int] = lambda index: 0,
        apart: Callable[[int, int], bool] | None = None,
    ) -> Iterator[list[int]]:
        """The sendable records of ``indices``, in order, grouped into calls of at most
        ``max_records`` records and ``max_bytes`` bytes (by ``size``); ``apart(previous,
        index)`` starts a new call between two neighbours. Lazy: the caller reports each call's
        outcome before asking for the next, whose records are checked against it."""
        chunk: list[int] = []
        total = 0
        for index in indices:
            if not self.sendable(index):
                continue
            weight = size(index)
            if chunk and (
                (max_records is not None and len(chunk) >= max_records)
                or (max_bytes is not None and total + weight > max_bytes)
                or (apart is not None and apart(chunk[-1], index))
            ):
                yield chunk
                chunk, total = [], 0
                if not self.sendable(index):
                    continue
            chunk.append(index)
            total += weight
        if chunk:
            yield chunk
