"""From a decoded request body to an interactions record, checked against the config.

Everything that can make an event fail later at Personalize is refused here instead: missing
ids, conversions naming unknown recommenders/features/metrics, ``properties`` that is not a
JSON object or that grows past 1,024 characters once auto-context is merged in.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ingest.body import Event, EventsBody
from schemas.config import Config, Namespace
from schemas.errors import InvalidRequest, NotFound
from schemas.records import new_record_id, request_context

MAX_PROPERTIES = 1024
# What json.dumps(separators=(",", ":"), ensure_ascii=False, allow_nan=False) would build on
# every call; the encoder holds no state between calls.
_PROPERTIES_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A record ready to write, and what to answer once it is durable. ``record`` is None for
    a request with nothing in it (``{}``, empty lists): answered as a success, nothing written,
    as the sample project did."""

    partition_key: str
    record: dict[str, Any] | None
    events: int


def build_record(
    body: EventsBody,
    namespace: Namespace,
    config: Config,
    headers: Mapping[str, str],
    now: datetime,
) -> Accepted:
    if not namespace.takes_events:
        raise NotFound(
            f"Namespace '{namespace.key}' has no event targets configured",
            code="NamespaceEventTargetsNotFound",
        )
    if not body.eventList and not body.experimentConversions:
        return Accepted("", None, 0)
    if body.experimentConversions and body.userId is None:
        raise InvalidRequest(
            "'userId' is required with 'experimentConversions'", code="UserIdRequired"
        )
    # Personalize needs a session for events; conversions alone are keyed by their user.
    if body.eventList and body.sessionId is None:
        raise InvalidRequest("'sessionId' is required with 'eventList'")
    key_field = config.partition_key if body.sessionId is not None else "userId"
    if key_field == "userId" and body.userId is None:
        raise InvalidRequest("'userId' is required (it is this service's partition key)")
    conversions = [
        _conversion(namespace, c.recommender, c.feature, c.metric, c.value, index)
        for index, c in enumerate(body.experimentConversions)
    ]

    now_ms = int(now.timestamp() * 1000)
    auto = namespace.auto_context.for_event(headers, now) if body.eventList else {}
    events = [_event(event, index, auto, now_ms) for index, event in enumerate(body.eventList)]
    # Set, for either field: checked above.
    partition_key = (body.userId if key_field == "userId" else body.sessionId) or ""
    record = {
        "recordId": new_record_id(now_ms),
        "namespace": namespace.key,
        "receivedAt": now_ms,
        "partitionKeyField": key_field,
        "sessionId": body.sessionId or "",
        "userId": body.userId,
        "eventList": events,
        "experimentConversions": conversions,
        "context": request_context(headers),
    }
    return Accepted(partition_key, record, len(events))


def _conversion(
    namespace: Namespace,
    recommender: str,
    feature: str | None,
    metric: str | None,
    value: float | None,
    index: int,
) -> dict[str, Any]:
    """The conversion with its feature and metric named (filled in where the config leaves
    only one choice), or the sample project's 400 for what does not match the config."""
    where = f"experimentConversions[{index}]"
    found = namespace.recommender_named(recommender)
    if found is None:
        raise InvalidRequest(
            f"{where}: recommender '{recommender}' is not configured in '{namespace.key}'",
            code="InvalidRecommender",
        )
    if not found.experiments:
        raise InvalidRequest(
            f"{where}: recommender '{recommender}' has no experiments",
            code="ExperimentsNotFound",
        )
    if feature is None:
        if len(found.experiments) > 1:
            raise InvalidRequest(
                f"{where}: recommender '{recommender}' has several experiments; name the 'feature'",
                code="InvalidExperimentFeature",
            )
        feature = next(iter(found.experiments))
    experiment = found.experiments.get(feature)
    if experiment is None:
        raise InvalidRequest(
            f"{where}: recommender '{recommender}' has no experiment feature '{feature}'",
            code="InvalidExperimentFeature",
        )
    if metric is None:
        if len(experiment.metrics) != 1:
            raise InvalidRequest(
                f"{where}: feature '{feature}' has {len(experiment.metrics)} metrics; name the "
                "'metric'",
                code="InvalidExperimentMetric",
            )
        metric = next(iter(experiment.metrics))
    if metric not in experiment.metrics:
        raise InvalidRequest(
            f"{where}: feature '{feature}' has no metric '{metric}'",
            code="InvalidExperimentMetric",
        )
    return {"recommender": recommender, "feature": feature, "metric": metric, "value": value}


def _event(event: Event, index: int, auto: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    return {
        "eventId": event.eventId,
        "eventType": event.eventType,
        "eventValue": event.eventValue,
        "itemId": event.itemId,
        "impression": event.impression or [],
        "properties": _properties(event.properties, auto, index),
        "recommendationId": event.recommendationId,
        "sentAt": int(event.sentAt * 1000) if event.sentAt is not None else now_ms,
        "metricAttribution": (
            {"eventAttributionSource": event.metricAttribution.eventAttributionSource}
            if event.metricAttribution
            else None
        ),
    }


@functools.lru_cache(maxsize=1024)
def _auto_json(items: tuple[tuple[str, Any], ...]) -> str:
    """The properties of an event that brought none of its own: auto-context values only,
    which repeat from request to request (a pure function, so remembering it is safe)."""
    text = _PROPERTIES_JSON.encode(dict(items))
    text.encode("utf-8")  # ValueError for a lone surrogate, as below
    return text


def _properties(
    given: str | dict[str, Any] | None, auto: Mapping[str, Any], index: int
) -> str | None:
    where = f"eventList[{index}].properties"
    if given == "":  # the sample's clients send an empty string for "no properties"
        given = None
    if isinstance(given, str):
        try:
            parsed = json.loads(given)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{where} is not valid JSON: {exc.msg} (char {exc.pos})") from None
        except ValueError as exc:  # e.g. an integer past Python's digit limit
            raise InvalidRequest(f"{where} is not usable JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(f"{where} must be a JSON object")
        given = parsed
    if given is None:
        if not auto:
            return None
        try:
            text = _auto_json(tuple(auto.items()))
        except ValueError as exc:  # a mapTo from the config that is not valid UTF-8
            raise InvalidRequest(f"{where} cannot be sent as JSON: {exc}") from None
    else:
        merged = {**auto, **given}  # the client's own values win over auto-context
        if not merged:
            return None
        try:
            # json.loads takes NaN, Infinity and unpaired surrogate escapes; none is valid JSON
            # for Personalize, and a lone surrogate cannot even be written as UTF-8.
            text = _PROPERTIES_JSON.encode(merged)
            text.encode("utf-8")
        except ValueError as exc:
            raise InvalidRequest(f"{where} cannot be sent as JSON: {exc}") from None
    if len(text) > MAX_PROPERTIES:
        raise InvalidRequest(
            f"{where} is {len(text)} characters with auto-context merged in; "
            f"Personalize accepts at most {MAX_PROPERTIES}"
        )
    return text
