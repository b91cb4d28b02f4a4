"""``evidently``: exposures and conversions as CloudWatch Evidently project events.

CloudWatch Evidently was discontinued in 2025 and is gone from boto3/botocore; this target is
for endpoints that still speak its wire format (``endpointUrl`` is required). It sends what the
sample project sent: ``PutProjectEvents`` — ``POST /projects/{project}/events`` with
``{"events": [{"timestamp", "type": "aws.evidently.custom", "data": "<JSON text>"}]}``, at most
50 events a call, signed with SigV4 for the service ``evidently``.

Only experiments with ``method: evidently`` are reported. An event's ``data`` is the nested
object the metric's dotted paths describe: ``entityIdKey`` gets the user id, ``valueKey`` the
value — a conversion's value, or ``1.0000001`` when the client sent none; an exposure (one per
metric with ``trackExposures``) gets ``0.0000001``. Events go to the target's ``project``.

Outcomes: 429, 5xx, timeouts and connection errors are retryable; any other 4xx is permanent.
After a retryable failure the rest of the batch is not sent (``Deferred``), so nothing
overtakes the record being retried (``consumers.targets.outcomes``). Evidently has no event ids: a retried call may count
events twice there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from consumers.base import Delivery, Failures
from consumers.targets import TargetContext
from consumers.targets.outcomes import Outcomes
from schemas.codec import EXPOSURE, INTERACTION
from schemas.config import Experiment, TargetConfig
from schemas.errors import (
    ConfigError,
    InvalidRequest,
    NotFound,
    OperatorError,
    P13nError,
    RetryableError,
    Throttled,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)

MAX_EVENTS_PER_CALL = 50
EVENT_TYPE = "aws.evidently.custom"
CONVERSION_DEFAULT_VALUE = 1.0000001  # the sample project's: a conversion without a value
EXPOSURE_VALUE = 0.0000001  # the sample project's: an exposure, not a conversion
SERVICE = "evidently"


def nested(*pairs: tuple[str, Any]) -> dict[str, Any]:
    """``nested(("a.b", 1), ("a.c", 2))`` → ``{"a": {"b": 1, "c": 2}}``."""
    out: dict[str, Any] = {}
    for path, value in pairs:
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out


def classify(status: int, body: bytes, what: str, retry_after: str | None = None) -> P13nError:
    """The p13n error for an HTTP error answer of an Evidently-wire endpoint."""
    code, message = f"HTTP{status}", ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            code = str(doc.get("__type") or doc.get("code") or code).rsplit("#", 1)[-1]
            message = str(doc.get("message") or doc.get("Message") or "")
    except ValueError:
        message = body[:200].decode("utf-8", "replace")
    text = f"{what}: {status} {code}: {message}".rstrip(": ")
    if status == 429:
        seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
        return Throttled(text, code=code, retry_after=seconds)
    if status == 503:
        return Unavailable(text, code=code)
    if status >= 500:
        return UpstreamError(text, code=code)
    if status in (401, 403):  # our credentials or their permissions: the operator's to fix
        return OperatorError(text, code=code)
    if status == 404:
        return NotFound(text, code=code)
    return InvalidRequest(text, code=code)


class EvidentlyTarget:
    @dataclass(frozen=True)
    class Settings:
        project: str

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> EvidentlyTarget.Settings:
            project = options.get("project")
            if not project:
                raise ConfigError(f"event target {where}: evidently needs a project")
            return cls(project)

    kinds = frozenset({INTERACTION, EXPOSURE})
    calls_aws = True

    def __init__(
        self, config: TargetConfig, context: TargetContext, *, timeout: float = 5.0
    ) -> None:
        self.name = config.name
        if not config.endpoint_url:
            raise ConfigError(
                f"event target {config.group}: evidently needs an endpointUrl (CloudWatch "
                "Evidently was discontinued in 2025; point it at an endpoint that speaks its "
                "wire format)"
            )
        project = self.Settings.parse(config.options, config.group).project
        self.url = f"{config.endpoint_url.rstrip('/')}/projects/{quote(project, safe='')}/events"
        self.region = config.region
        self.timeout = timeout
        self._namespace = context.config.namespace(config.namespace)
        self._credentials: Any = None
        self._http: httpx.Client | None = None

    def open(self) -> None:
        import boto3

        session = boto3.session.Session()
        self._credentials = session.get_credentials()
        if self._credentials is None:
            raise ConfigError(f"event target {self.name}: no AWS credentials to sign with")
        self.region = self.region or session.region_name or "us-east-1"
        self._http = httpx.Client(timeout=self.timeout, follow_redirects=False)

    # -- events ---------------------------------------------------------------------------------

    def events(self, delivery: Delivery) -> list[dict[str, Any]]:
        """The Evidently events one record becomes (none for experiments not on Evidently)."""
        record = delivery.fields
        seconds = record["receivedAt"] / 1000
        user_id = record.get("userId")
        if not user_id:
            return []
        out = []
        for experiment, metric_names, value in self._measured(delivery):
            for name in metric_names:
                metric = experiment.metrics[name]
                data = nested((metric.entity_id_key, user_id), (metric.value_key, value))
                out.append({"timestamp": seconds, "type": EVENT_TYPE, "data": json.dumps(data)})
        return out

    def _measured(self, delivery: Delivery) -> Iterator[tuple[Experiment, list[str], float]]:
        record = delivery.fields
        if delivery.kind == EXPOSURE:
            experiment = self._experiment(record["recommender"], record["feature"])
            if experiment is not None:
                tracked = [n for n, m in experiment.metrics.items() if m.track_exposures]
                yield experiment, tracked, EXPOSURE_VALUE
            return
        for conversion in record.get("experimentConversions") or ():
            experiment = self._experiment(conversion["recommender"], conversion["feature"])
            if experiment is not None and conversion["metric"] in experiment.metrics:
                value = conversion.get("value")
                value = CONVERSION_DEFAULT_VALUE if value is None else value
                yield experiment, [conversion["metric"]], value

    def _experiment(self, recommender_name: str, feature: str) -> Experiment | None:
        recommender = self._namespace.recommender_named(recommender_name)
        experiment = recommender.experiments.get(feature) if recommender else None
        return experiment if experiment is not None and experiment.method == "evidently" else None

    # -- sending --------------------------------------------------------------------------------

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._http is None:
            raise Unavailable("evidently target is not open")
        outcomes = Outcomes(batch)
        chunk: list[tuple[int, dict[str, Any]]] = []  # (index of the delivery, event)

        def flush() -> None:
            if chunk:
                self._report(outcomes, chunk)
                chunk.clear()

        for index, delivery in enumerate(batch):
            events = self.events(delivery)
            if not events:
                continue
            if len(chunk) + len(events) > MAX_EVENTS_PER_CALL:
                flush()  # a record's events share a call unless it has more than 50
            if not outcomes.sendable(index):
                continue
            for event in events:
                chunk.append((index, event))
                if len(chunk) == MAX_EVENTS_PER_CALL:
                    flush()
                    if index in outcomes.failures:
                        break
        flush()
        return outcomes.failures

    def _report(self, outcomes: Outcomes, chunk: list[tuple[int, dict[str, Any]]]) -> None:
        """Send one call and record its outcome: any retryable failure, of the call or of one
        event, ends the batch; a permanent one fails its records only."""
        for index, error in self._put(chunk).items():
            if index in outcomes.failures:
                continue  # a record spread over two calls keeps its first failure
            if isinstance(error, RetryableError):
                outcomes.fail_call([index], error)
            else:
                outcomes.fail(index, error)

    def _put(self, chunk: list[tuple[int, dict[str, Any]]]) -> dict[int, P13nError]:
        """One PutProjectEvents call: the deliveries it failed for, and why."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self._http is None:
            raise Unavailable("evidently target is not open")
        what = "evidently PutProjectEvents"
        owners = [index for index, _ in chunk]
        body = json.dumps({"events": [event for _, event in chunk]}).encode()
        signed = AWSRequest(
            method="POST", url=self.url, data=body, headers={"Content-Type": "application/json"}
        )
        credentials = self._credentials.get_frozen_credentials()
        SigV4Auth(credentials, SERVICE, self.region).add_auth(signed)
        error: P13nError
        try:
            response = self._http.post(self.url, content=body, headers=dict(signed.headers.items()))
        except httpx.TimeoutException:
            error = UpstreamTimeout(f"{what}: timed out after {self.timeout}s")
            return dict.fromkeys(owners, error)
        except httpx.TransportError as exc:
            error = Unavailable(f"{what}: {exc}", code=type(exc).__name__)
            return dict.fromkeys(owners, error)
        if response.status_code >= 300:
            retry_after = response.headers.get("retry-after")
            error = classify(response.status_code, response.content, what, retry_after)
            return dict.fromkeys(owners, error)
        try:
            results = json.loads(response.content).get("eventResults") or []
        except (ValueError, AttributeError):
            results = []
        failed: dict[int, P13nError] = {}
        for position, result in enumerate(results[: len(owners)]):
            code = result.get("errorCode") if isinstance(result, Mapping) else None
            if code:
                message = f"{what}: event failed: {code}: {result.get('errorMessage') or ''}"
                failed.setdefault(owners[position], UpstreamError(message.rstrip(": "), code=code))
        return failed

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
