"""The configuration document: validated once into frozen objects that every room reads.

``load_config`` checks a document against ``config_schema.json`` (every error with its JSON
path), then against the rules a schema cannot state (a fallback names a variation of the same
recommender, experiment weights name existing variations, target names are unique), and builds
a ``Config``. Inheritance follows the sample project: ``autoContext``, ``filters``,
``cacheControl`` and ``inferenceItemMetadata`` are copied whole from the parent level
(root → namespace → recommender → variation) wherever a level does not set them, so every
object here already holds its effective value.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from importlib import resources
from types import MappingProxyType
from typing import Any

from jsonschema import Draft202012Validator

from schemas.autocontext import AutoContext
from schemas.errors import ConfigError, NotFound

ACTIONS = ("recommend-items", "related-items", "rerank-items")
_PLAIN_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
INHERITED = ("autoContext", "filters", "cacheControl", "inferenceItemMetadata")
EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(value: Any) -> Any:
    """Deep read-only copy of JSON data (dicts become mapping proxies, lists tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """A plain, JSON-serialisable copy of frozen config data (``_frozen`` undone)."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class CacheRule:
    max_age: int | None = None
    directives: str | None = None


@dataclass(frozen=True)
class CacheControl:
    user_specified: CacheRule | None = None
    synthetic_user_specified: CacheRule | None = None
    no_user_specified: CacheRule | None = None

    @classmethod
    def from_config(cls, doc: Mapping[str, Any] | None) -> CacheControl:
        doc = doc or {}

        def rule(key: str) -> CacheRule | None:
            part = doc.get(key)
            return CacheRule(part.get("maxAge"), part.get("directives")) if part else None

        return cls(rule("userSpecified"), rule("syntheticUserSpecified"), rule("noUserSpecified"))


@dataclass(frozen=True)
class ProducerConfig:
    """Group-commit settings: a batch is written when ``max_batch_records`` or
    ``max_batch_bytes`` is reached or ``linger_ms`` has passed since its first entry. On a
    stream with lanes (Kinesis: one per shard) up to ``max_in_flight`` calls run at once, at
    most one per lane."""

    linger_ms: float = 2.0
    max_batch_records: int = 500
    max_batch_bytes: int = 4 * 1024 * 1024
    queue_size: int = 20_000
    put_timeout_ms: int = 10_000
    max_in_flight: int = 4


KINESIS_LINGER_MS = 5.0  # the default linger_ms on Kinesis


@dataclass(frozen=True)
class StreamConfig:
    type: str = "embedded"
    path: str | None = None
    shards: int = 4
    retention_hours: float = 24.0
    stream_name: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    aggregate: bool = True
    producer: ProducerConfig = field(default_factory=ProducerConfig)


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: float
    burst: int

    @classmethod
    def from_config(cls, doc: Mapping[str, Any] | None) -> RateLimit | None:
        if not doc:
            return None
        rate = float(doc["requestsPerSecond"])
        return cls(rate, int(doc.get("burst", max(1, math.ceil(rate)))))


@dataclass(frozen=True)
class ApiKey:
    id: str
    sha256: str
    rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class AuthConfig:
    api_keys: tuple[ApiKey, ...] = ()
    rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class CorsConfig:
    """Cross-origin access (``cors``): the sample project's behaviour by default — any origin,
    preflights answered and remembered by browsers for 500 s. Header names are lower case."""

    enabled: bool = True
    allow_origins: tuple[str, ...] = ("*",)
    allow_headers: tuple[str, ...] = ("content-type", "x-api-key", "authorization", "if-none-match")
    expose_headers: tuple[str, ...] = (
        "etag",
        "retry-after",
        "x-personalization-config-version",
        "x-p13n-cache",
        "x-p13n-fallback",
    )
    max_age_seconds: int = 500

    @property
    def any_origin(self) -> bool:
        return "*" in self.allow_origins

    @classmethod
    def from_config(cls, doc: Mapping[str, Any] | None) -> CorsConfig:
        doc = doc or {}
        default = cls()

        def names(key: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
            given = doc.get(key)
            return fallback if given is None else tuple(name.lower() for name in given)

        return cls(
            enabled=doc.get("enabled", True),
            allow_origins=tuple(doc.get("allowOrigins", default.allow_origins)),
            allow_headers=names("allowHeaders", default.allow_headers),
            expose_headers=names("exposeHeaders", default.expose_headers),
            max_age_seconds=doc.get("maxAgeSeconds", default.max_age_seconds),
        )


@dataclass(frozen=True)
class CompressionConfig:
    """gzip of answers (``compression``) for clients that accept it, from ``minimum_bytes`` on."""

    enabled: bool = True
    minimum_bytes: int = 1024
    level: int = 5

    @classmethod
    def from_config(cls, doc: Mapping[str, Any] | None) -> CompressionConfig:
        doc = doc or {}
        default = cls()
        return cls(
            enabled=doc.get("enabled", default.enabled),
            minimum_bytes=doc.get("minimumBytes", default.minimum_bytes),
            level=doc.get("level", default.level),
        )


@dataclass(frozen=True)
class ConsumerDefaults:
    """The ``consumer`` block: defaults for every consumer group. A target's own
    ``batchSize``, ``maxAttempts`` and ``maxRecordAgeSeconds`` win; None leaves the runner's
    own default (``consumers.runner.RetryPolicy``)."""

    batch_size: int = 500
    max_attempts: int | None = None
    max_record_age_seconds: float | None = None
    poll_interval_ms: float = 200

    @classmethod
    def from_config(cls, doc: Mapping[str, Any] | None) -> ConsumerDefaults:
        doc = doc or {}
        return cls(
            batch_size=doc.get("batchSize", cls.batch_size),
            max_attempts=doc.get("maxAttempts"),
            max_record_age_seconds=doc.get("maxRecordAgeSeconds"),
            poll_interval_ms=doc.get("pollIntervalMs", cls.poll_interval_ms),
        )


@dataclass(frozen=True)
class TargetConfig:
    """One event target; ``options`` holds the type-specific keys as written."""

    type: str
    name: str
    namespace: str
    options: Mapping[str, Any]
    endpoint_url: str | None = None
    region: str | None = None
    dead_letter_uri: str | None = None
    batch_size: int | None = None
    max_attempts: int | None = None
    max_record_age_seconds: int | None = None

    @property
    def group(self) -> str:
        """The consumer group that delivers to this target."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Metric:
    name: str
    entity_id_key: str
    value_key: str
    track_exposures: bool = False


@dataclass(frozen=True)
class Experiment:
    feature: str
    method: str
    project: str | None
    metrics: Mapping[str, Metric]
    weights: Mapping[str, float]


@dataclass(frozen=True)
class Variation:
    name: str
    type: str
    options: Mapping[str, Any]
    auto_context: AutoContext
    filters: tuple[Mapping[str, Any], ...]
    cache_control: CacheControl
    inference_item_metadata: Mapping[str, Any] | None
    timeout_ms: int = 1000
    fallback: str | None = None
    # The variation's own config object with the inherited keys filled in: what the sample
    # project handed custom functions as ``variation``.
    document: Mapping[str, Any] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class PostProcessorConfig:
    """``responsePostProcessor``: the Lambda function that may rewrite an answer, and how many
    more items than asked for to get from the recommender first (``lookAheadMultiplier``,
    capped at ``lookAheadMaximumValue``), so it can drop some and still fill the page."""

    arn: str
    look_ahead_multiplier: float | None = None
    look_ahead_maximum: int | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any] | None) -> PostProcessorConfig | None:
        if not doc:
            return None
        multiplier = doc.get("lookAheadMultiplier")
        maximum = doc.get("lookAheadMaximumValue")
        return cls(
            arn=str(doc["arn"]),
            look_ahead_multiplier=float(multiplier) if multiplier is not None else None,
            look_ahead_maximum=int(maximum) if maximum is not None else None,
        )


@dataclass(frozen=True)
class Recommender:
    action: str
    name: str
    variations: Mapping[str, Variation]
    experiments: Mapping[str, Experiment]
    response_post_processor: PostProcessorConfig | None
    auto_context: AutoContext
    filters: tuple[Mapping[str, Any], ...]
    cache_control: CacheControl
    inference_item_metadata: Mapping[str, Any] | None
    # Its config object with the inherited keys filled in (the sample's ``recommender.config``).
    document: Mapping[str, Any] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class Namespace:
    key: str
    name: str | None
    recommenders: Mapping[str, Mapping[str, Recommender]]
    event_targets: tuple[TargetConfig, ...]
    auto_context: AutoContext
    filters: tuple[Mapping[str, Any], ...]
    cache_control: CacheControl
    inference_item_metadata: Mapping[str, Any] | None

    @cached_property
    def takes_events(self) -> bool:
        """Whether ``POST /events`` has anywhere to go: event targets, or experiments whose
        conversions are tracked (they are, without a target)."""
        tracked = any(
            r.experiments for by_name in self.recommenders.values() for r in by_name.values()
        )
        return bool(self.event_targets) or tracked

    def recommender_named(self, name: str) -> Recommender | None:
        """A recommender by name in any action (conversions name recommenders this way)."""
        for by_name in self.recommenders.values():
            if name in by_name:
                return by_name[name]
        return None


@dataclass(frozen=True)
class Config:
    version: str | None
    namespaces: Mapping[str, Namespace]
    stream: StreamConfig
    partition_key: str
    data_dir: str
    auth: AuthConfig
    max_body_bytes: int
    dead_letter_uri: str | None
    experiment_store: Mapping[str, Any]
    consumer: ConsumerDefaults
    document: Mapping[str, Any] = field(repr=False, compare=False)
    source: str = "builtin"
    # Where consumer groups checkpoint: {"type": "sqlite"} or {"type": "dynamodb", ...}.
    checkpoints: Mapping[str, Any] = field(default_factory=lambda: _frozen({"type": "sqlite"}))
    cors: CorsConfig = field(default_factory=CorsConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    def namespace(self, key: str) -> Namespace:
        found = self.namespaces.get(key)
        if found is None:
            raise NotFound(f"Namespace '{key}' is not configured", code="NamespaceNotFound")
        return found

    def stream_path(self) -> str:
        return self.stream.path or os.path.join(self.data_dir, "stream.db")

    def with_data_dir(self, data_dir: str) -> Config:
        return replace(self, data_dir=data_dir)

    def summary(self) -> str:
        targets = sum(len(ns.event_targets) for ns in self.namespaces.values())
        recommenders = sum(
            len(by_name) for ns in self.namespaces.values() for by_name in ns.recommenders.values()
        )
        return (
            f"version {self.version or '-'}: {len(self.namespaces)} namespace(s), "
            f"{recommenders} recommender(s), {targets} event target(s), "
            f"{self.stream.type} stream"
        )


@cache
def _validator() -> Draft202012Validator:
    text = (resources.files("schemas") / "config_schema.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))


def _path_of(error: Any) -> str:
    return str(error.json_path)


def validate_document(document: Any) -> list[tuple[str, str]]:
    """Every schema and semantic error as ``(json path, reason)``, sorted; [] when valid."""
    errors = [(_path_of(e), e.message) for e in _validator().iter_errors(document)]
    if not errors:
        errors = _semantic_errors(document)
    return sorted(set(errors))


def json_path(*parts: str | int) -> str:
    """A JSON path written the way jsonschema writes its errors' paths."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            path += f".{part}"
        else:
            path += "['" + part.replace("\\", "\\\\").replace("'", "\\'") + "']"
    return path


def _semantic_errors(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the schema cannot say: names that must refer to, or differ from, other names."""
    errors: list[tuple[str, str]] = []
    key_ids = [key["id"] for key in doc.get("auth", {}).get("apiKeys", [])]
    if "rateLimit" in doc.get("auth", {}) and not key_ids:
        errors.append(
            (json_path("auth", "rateLimit"), "a rate limit is per API key: set auth.apiKeys")
        )
    for index, key_id in enumerate(key_ids):
        if key_id in key_ids[:index]:
            errors.append(
                (json_path("auth", "apiKeys", index, "id"), f"duplicate API key id '{key_id}'")
            )
    for ns_key, ns in doc["namespaces"].items():
        seen: set[str] = set()
        for index, target in enumerate(ns.get("eventTargets", [])):
            name = target.get("name") or f"{target['type']}-{index}"
            if name in seen:
                errors.append(
                    (
                        json_path("namespaces", ns_key, "eventTargets", index),
                        f"duplicate target name '{name}'",
                    )
                )
            seen.add(name)
        for action, by_name in ns.get("recommenders", {}).items():
            for rec_name, rec in by_name.items():
                base = ("namespaces", ns_key, "recommenders", action, rec_name)
                variations = rec["variations"]
                for var_name, var in variations.items():
                    fallback = var.get("fallback")
                    if fallback is not None and (
                        fallback not in variations or fallback == var_name
                    ):
                        errors.append(
                            (
                                json_path(*base, "variations", var_name, "fallback"),
                                f"'{fallback}' is not another variation of this recommender",
                            )
                        )
                for feature, exp in rec.get("experiments", {}).items():
                    for var_name in exp.get("weights", {}):
                        if var_name not in variations:
                            errors.append(
                                (
                                    json_path(*base, "experiments", feature, "weights", var_name),
                                    f"'{var_name}' is not a variation of this recommender",
                                )
                            )
                    if exp.get("weights") and sum(exp["weights"].values()) <= 0:
                        errors.append(
                            (
                                json_path(*base, "experiments", feature, "weights"),
                                "weights sum to 0",
                            )
                        )
    return errors


def load_config(document: Any, *, source: str = "builtin") -> Config:
    """Validate ``document`` and build the frozen ``Config``; ``ConfigError`` lists every error."""
    errors = validate_document(document)
    if errors:
        first = "; ".join(f"{path}: {reason}" for path, reason in errors[:3])
        raise ConfigError(f"invalid config from {source}: {first}", errors)
    return _build(document, source)


def parse_config_text(text: str | bytes, *, source: str) -> Config:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        position = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
        raise ConfigError(
            f"config from {source} is not JSON: {exc.msg} at {position}", [("$", exc.msg)]
        ) from exc
    return load_config(document, source=source)


def default_document() -> dict[str, Any]:
    """The built-in embedded configuration used when none is given."""
    text = (resources.files("schemas") / "default_config.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def _inherit(level: Mapping[str, Any], parent: Mapping[str, Any]) -> dict[str, Any]:
    return {key: level[key] if key in level else parent.get(key) for key in INHERITED}


_SLASHED_LAMBDA_ARN = re.compile(r"^(arn:aws[a-z-]*:lambda:[^:]+:[0-9]{12}:function)/")


def _canonical_arns(value: Any) -> Any:
    """The document with the sample's ``...:function/NAME`` Lambda ARNs written as Lambda
    names them (``...:function:NAME``), the only form its API accepts."""
    if isinstance(value, str):
        return _SLASHED_LAMBDA_ARN.sub(r"\1:", value)
    if isinstance(value, Mapping):
        return {k: _canonical_arns(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_arns(v) for v in value]
    return value


def _build(doc: Mapping[str, Any], source: str) -> Config:
    doc = _canonical_arns(doc)
    root = _inherit(doc, {})
    namespaces = {key: _namespace(key, ns, root) for key, ns in doc["namespaces"].items()}
    stream_doc = doc.get("stream", {})
    # A PutRecords call costs far more than a SQLite commit, so on Kinesis a batch waits a
    # little longer for the callers the previous call answered.
    linger = KINESIS_LINGER_MS if stream_doc.get("type") == "kinesis" else ProducerConfig.linger_ms
    producer = ProducerConfig(
        **{"linger_ms": linger}
        | {
            attr: stream_doc.get("producer", {})[key]
            for attr, key in (
                ("linger_ms", "lingerMs"),
                ("max_batch_records", "maxBatchRecords"),
                ("max_batch_bytes", "maxBatchBytes"),
                ("queue_size", "queueSize"),
                ("put_timeout_ms", "putTimeoutMs"),
                ("max_in_flight", "maxInFlight"),
            )
            if key in stream_doc.get("producer", {})
        }
    )
    stream = StreamConfig(
        type=stream_doc.get("type", "embedded"),
        path=stream_doc.get("path"),
        shards=stream_doc.get("shards", 4),
        retention_hours=stream_doc.get("retentionHours", 24.0),
        stream_name=stream_doc.get("streamName"),
        region=stream_doc.get("region"),
        endpoint_url=stream_doc.get("endpointUrl"),
        aggregate=stream_doc.get("aggregate", True),
        producer=producer,
    )
    auth_doc = doc.get("auth", {})
    auth = AuthConfig(
        api_keys=tuple(
            ApiKey(k["id"], k["sha256"].lower(), RateLimit.from_config(k.get("rateLimit")))
            for k in auth_doc.get("apiKeys", [])
        ),
        rate_limit=RateLimit.from_config(auth_doc.get("rateLimit")),
    )
    return Config(
        version=doc.get("version"),
        namespaces=MappingProxyType(namespaces),
        stream=stream,
        partition_key=doc.get("partitionKey", "sessionId"),
        data_dir=doc.get("dataDir", ".p13n"),
        auth=auth,
        max_body_bytes=doc.get("limits", {}).get("maxBodyBytes", 256 * 1024),
        dead_letter_uri=(doc.get("deadLetter") or {}).get("uri"),
        experiment_store=_frozen(doc.get("experimentStore", {"type": "sqlite"})),
        consumer=ConsumerDefaults.from_config(doc.get("consumer")),
        document=_frozen(doc),
        source=source,
        checkpoints=_frozen(doc.get("checkpoints", {"type": "sqlite"})),
        cors=CorsConfig.from_config(doc.get("cors")),
        compression=CompressionConfig.from_config(doc.get("compression")),
    )


def _namespace(key: str, doc: Mapping[str, Any], parent: Mapping[str, Any]) -> Namespace:
    own = _inherit(doc, parent)
    recommenders = {
        action: MappingProxyType(
            {name: _recommender(action, name, rec, own) for name, rec in by_name.items()}
        )
        for action, by_name in doc.get("recommenders", {}).items()
    }
    targets = tuple(
        _target(key, index, target, doc.get("deadLetter"))
        for index, target in enumerate(doc.get("eventTargets", []))
    )
    return Namespace(
        key=key,
        name=doc.get("name"),
        recommenders=MappingProxyType(recommenders),
        event_targets=targets,
        **_inherited_fields(own),
    )


def _inherited_fields(own: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "auto_context": AutoContext.from_config(own["autoContext"]),
        "filters": _frozen(own["filters"] or []),
        "cache_control": CacheControl.from_config(own["cacheControl"]),
        "inference_item_metadata": _frozen(own["inferenceItemMetadata"]),
    }


COMMON_TARGET_KEYS = frozenset(
    {
        "type",
        "name",
        "endpointUrl",
        "region",
        "deadLetter",
        "batchSize",
        "maxAttempts",
        "maxRecordAgeSeconds",
    }
)


def _target(
    namespace: str, index: int, doc: Mapping[str, Any], ns_dead_letter: Mapping[str, Any] | None
) -> TargetConfig:
    dead_letter = doc.get("deadLetter") or ns_dead_letter or {}
    return TargetConfig(
        type=doc["type"],
        name=doc.get("name") or f"{doc['type']}-{index}",
        namespace=namespace,
        options=_frozen({k: v for k, v in doc.items() if k not in COMMON_TARGET_KEYS}),
        endpoint_url=doc.get("endpointUrl"),
        region=doc.get("region"),
        dead_letter_uri=dead_letter.get("uri"),
        batch_size=doc.get("batchSize"),
        max_attempts=doc.get("maxAttempts"),
        max_record_age_seconds=doc.get("maxRecordAgeSeconds"),
    )


def _recommender(
    action: str, name: str, doc: Mapping[str, Any], parent: Mapping[str, Any]
) -> Recommender:
    own = _inherit(doc, parent)
    variations = {
        var_name: _variation(var_name, var, own) for var_name, var in doc["variations"].items()
    }
    experiments = {
        feature: Experiment(
            feature=feature,
            method=exp["method"],
            project=exp.get("project"),
            metrics=MappingProxyType(
                {
                    metric: Metric(
                        metric, m["entityIdKey"], m["valueKey"], m.get("trackExposures", False)
                    )
                    for metric, m in exp.get("metrics", {}).items()
                }
            ),
            weights=MappingProxyType(
                dict(exp["weights"]) if exp.get("weights") else {v: 1.0 for v in variations}
            ),
        )
        for feature, exp in doc.get("experiments", {}).items()
    }
    return Recommender(
        action=action,
        name=name,
        variations=MappingProxyType(variations),
        experiments=MappingProxyType(experiments),
        response_post_processor=PostProcessorConfig.from_document(doc.get("responsePostProcessor")),
        document=_with_inherited(doc, own),
        **_inherited_fields(own),
    )


VARIATION_COMMON = frozenset({"type", "timeoutMs", "fallback", *INHERITED})


def _variation(name: str, doc: Mapping[str, Any], parent: Mapping[str, Any]) -> Variation:
    own = _inherit(doc, parent)
    return Variation(
        name=name,
        type="lambda" if doc["type"] == "function" else doc["type"],
        options=_frozen({k: v for k, v in doc.items() if k not in VARIATION_COMMON}),
        timeout_ms=doc.get("timeoutMs", 1000),
        fallback=doc.get("fallback"),
        document=_with_inherited(doc, own),
        **_inherited_fields(own),
    )


def _with_inherited(doc: Mapping[str, Any], own: Mapping[str, Any]) -> Mapping[str, Any]:
    return _frozen({**doc, **{k: v for k, v in own.items() if v is not None}})
