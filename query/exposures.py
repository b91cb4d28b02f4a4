"""Exposure records: one per answer an experiment chose (200 only), offered to the producer
without waiting; when its queue is full the record is dropped and counted, never silently."""

from __future__ import annotations

import logging
from typing import Protocol

from query.base import Query
from query.caching import Entry
from query.observer import Observer
from query.variations import Choice
from schemas.codec import EXPOSURE, Codec
from schemas.config import Recommender
from schemas.records import new_record_id
from streams.base import Entry as StreamEntry

log = logging.getLogger("p13n.query")

DROPPED_LOG_SECONDS = 10  # at most one warning about dropped records this often


class ExposureSink(Protocol):
    def offer(self, entry: StreamEntry) -> bool: ...


class Exposures:
    def __init__(self, sink: ExposureSink | None, codec: Codec, observer: Observer) -> None:
        self._sink = sink
        self._codec = codec
        self._observer = observer
        self._dropped_logged_at = 0.0

    def expose(
        self, query: Query, rec: Recommender, choice: Choice, entry: Entry, now: float
    ) -> None:
        """Offer the exposure record of ``entry`` served at ``now``, when an experiment chose
        its variation for a known user."""
        if choice.experiment is None or query.user_id is None or self._sink is None:
            return
        record = {
            "recordId": new_record_id(int(now * 1000)),
            "namespace": query.namespace,
            "receivedAt": int(now * 1000),
            "partitionKeyField": "userId",
            "userId": query.user_id,
            "sessionId": None,
            "action": query.action,
            "recommender": rec.name,
            "feature": choice.experiment.feature,
            "variation": choice.variation.name,
            "recommendationId": entry.recommendation_id,
        }
        data = self._codec.encode(EXPOSURE, record)
        if self._sink.offer(StreamEntry(query.user_id, data)):
            self._observer.exposure("written")
            return
        self._observer.exposure("dropped")
        if now - self._dropped_logged_at >= DROPPED_LOG_SECONDS:
            self._dropped_logged_at = now
            log.warning("exposure records are being dropped: the producer queue is full")
