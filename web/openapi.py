"""The OpenAPI 3.1 description of the HTTP API, generated from one config.

``build_spec(config)`` is a pure function of the config: the same config gives the same document,
key for key, so ``GET /openapi.json`` and ``p13n openapi`` agree. What the config decides:

- the ``namespace`` and ``recommender`` path parameters are enums of what is configured. For each
  action, ``namespace`` lists the namespaces with a recommender of that action and
  ``recommender`` the names of that action's recommenders across all of them (one path cannot say
  which name belongs to which namespace; a mismatched pair is a 404). An action no namespace
  configures has no paths at all: every request to it would be a 404.
- ``POST /events/{namespace}`` lists every namespace (one without event targets answers 404).
- with ``auth.apiKeys`` set, the ``x-api-key`` security scheme applies to every operation but the
  health checks, which then also document 401 and 403.
- with a ``version``, every response documents the ``X-Personalization-Config-Version`` header.

OpenAPI 3.1 because its schemas are JSON Schema 2020-12: the events body is described by the very
msgspec structs that validate it (``ingest.body``), so the two cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ingest.body import EventsBody
from query.base import DEFAULT_RESULTS, ITEM_LIST, MAX_RESULTS, RANKING
from query.params import KNOWN, MAX_ID, MAX_ITEMS, MAX_MAP_ENTRIES, MAX_MAP_VALUE
from schemas.config import Config

OPENAPI_VERSION = "3.1.0"
ACTIONS = ("recommend-items", "related-items", "rerank-items")
REF = "#/components/schemas/{name}"
VERSION_HEADER = "X-Personalization-Config-Version"
API_KEY_SCHEME = "apiKey"

# (status, component name, description) of every error response an operation may document.
_ERRORS = {
    400: (
        "BadRequest",
        "Invalid parameter or body (type `Validation`): the message names it; the code is the "
        "sample project's (`InvalidJSONRequestPayload`, `InvalidContextParameter`, "
        "`InvalidExperimentFeature`, `UserIdRequired`, ...) or one in its style.",
    ),
    401: ("Unauthorized", "The `x-api-key` header is missing (`Authorization`, `MissingApiKey`)."),
    403: ("Forbidden", "The API key is not valid (`Authorization`, `InvalidApiKey`)."),
    404: (
        "NotFound",
        "Not configured (type `Configuration`: `NamespaceNotFound`, `RecommenderNotConfigured`, "
        "`NamespaceEventTargetsNotFound`), or no such route (`Validation`, `NotFound`).",
    ),
    405: ("MethodNotAllowed", "The route does not take this method (`MethodNotAllowed`)."),
    414: (
        "URITooLong",
        "The URL is longer than the 65,535 bytes the HTTP parser takes (`URITooLong`).",
    ),
    413: ("PayloadTooLarge", "The body is larger than `limits.maxBodyBytes` (`PayloadTooLarge`)."),
    415: (
        "UnsupportedMediaType",
        "The body is neither JSON nor `text/plain` (`UnsupportedMediaType`).",
    ),
    429: (
        "TooManyRequests",
        "Throttled: the recommender (its type, e.g. `Personalize`, `ThrottlingException`) or the "
        "API key's rate limit (`Throttling`, `TooManyRequests`); retry after `Retry-After`.",
    ),
    502: (
        "BadGateway",
        "The recommender failed; the type names it (`Personalize`, `Function`, `SageMaker`, "
        "`Http`), the code is its own (e.g. `FunctionInvokeError`).",
    ),
    503: (
        "ServiceUnavailable",
        "Stream (`StreamUnavailable`) or recommender (`CircuitOpen`) unavailable; retry after "
        "`Retry-After`.",
    ),
    504: ("GatewayTimeout", "The recommender did not answer in time (`Timeout`)."),
}
# Every ``type`` an error body may carry: the sample project's words, and p13n's for what the
# sample had no word for.
ERROR_TYPES = [
    "Validation",
    "Authorization",
    "Configuration",
    "Throttling",
    "Unavailable",
    "Personalize",
    "Function",
    "SageMaker",
    "DynamoDB",
    "Http",
    "Recommender",
    "Unhandled",
]
_RETRY_AFTER = (429, 503)
_EVENT_ERRORS = (400, 404, 405, 413, 414, 415, 503)
_QUERY_ERRORS = (400, 404, 405, 414, 429, 502, 503, 504)
_AUTH_ERRORS = (401, 403)


def build_spec(config: Config) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API this config serves (JSON-ready, deterministic)."""
    secured = bool(config.auth.api_keys)
    paths: dict[str, Any] = {"/events/{namespace}": {"post": _events(config, secured)}}
    for action in ACTIONS:
        paths.update(_action_paths(config, action, secured))
    paths["/healthz"] = {"get": _health("healthz", "The process is up.", "Liveness", config)}
    paths["/readyz"] = {
        "get": _health("readyz", "The stream answers (503 when it does not).", "Readiness", config)
    }
    paths["/metrics"] = {"get": _metrics(config, secured)}
    spec: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "p13n",
            "version": config.version or "unversioned",
            "description": (
                "Real-time personalization: send interaction events, read recommendations. "
                f"Generated from the running config (version {config.version or '-'})."
            ),
        },
        "tags": [
            {"name": "events", "description": "Interaction events, written to the stream."},
            {"name": "recommendations", "description": "Recommendations and rankings."},
            {"name": "operations", "description": "Health and metrics."},
        ],
        "paths": paths,
        "components": _components(config, secured),
    }
    if secured:
        spec["security"] = [{API_KEY_SCHEME: []}]
    return spec


# -- operations ---------------------------------------------------------------------------------


def _events(config: Config, secured: bool) -> dict[str, Any]:
    return {
        "operationId": "putEvents",
        "tags": ["events"],
        "summary": "Record interaction events",
        "description": (
            "One request becomes one stream record; 202 is answered once it is durable. A body "
            "with nothing to record (`{}`, empty lists) is a 202 that writes nothing. `sessionId` "
            "is required with `eventList`; `userId` with `experimentConversions` (each naming a "
            "configured recommender, and its feature and metric unless the recommender has one "
            "experiment / the experiment one metric). `trackingId` is accepted and ignored. "
            '`properties` may be a JSON object or its string (`""` is none), at most 1,024 '
            "characters once auto-context is merged in."
        ),
        "parameters": [
            _path_enum("namespace", sorted(config.namespaces), "A configured namespace.")
        ],
        "requestBody": {
            "required": True,
            # text/plain too: what navigator.sendBeacon sends (ingest.body.check_media_type)
            "content": {
                media: {"schema": _events_body(config)}
                for media in ("application/json", "text/plain")
            },
        },
        "responses": {
            "202": _response(config, "Accepted: durable in the stream.", _json_ref("Accepted")),
            **_error_refs(_EVENT_ERRORS + (_AUTH_ERRORS if secured else ())),
        },
    }


def _events_body(config: Config) -> dict[str, Any]:
    """The structs' schema plus the rules the service checks after decoding."""

    def needs(when: str, name: str) -> dict[str, Any]:
        return {
            "if": {"required": [when], "properties": {when: {"minItems": 1}}},
            "then": {"required": [name], "properties": {name: {"type": "string"}}},
        }

    # The string form of `properties` (a JSON object's text) is accepted, but a schema cannot
    # say "a string holding a JSON object": the spec documents the object, null and "" only.
    properties = {
        "anyOf": [{"type": "object"}, {"type": "null"}, {"const": ""}],
        "description": 'A JSON object (or, accepted too, its JSON text); null or "" for none.',
    }
    rules: list[dict[str, Any]] = [
        {"properties": {"eventList": {"items": {"properties": {"properties": properties}}}}},
        needs("eventList", "sessionId"),
        needs("experimentConversions", "userId"),
        {"properties": {"experimentConversions": _conversions(config)}},
    ]
    if config.partition_key == "userId":
        rules.append(needs("eventList", "userId"))
    return {"allOf": [{"$ref": REF.format(name="EventsBody")}, *rules]}


def _conversions(config: Config) -> dict[str, Any]:
    """One alternative per (recommender, feature) that can take conversions: ``feature`` may be
    left out when the recommender has one experiment, ``metric`` when the experiment has one.
    Across all namespaces: the namespace is a path parameter, so a conversion naming another
    namespace's recommender passes this schema and is still a 400 ``InvalidRecommender``."""
    choices: list[dict[str, Any]] = []
    for ns in config.namespaces.values():
        for by_name in ns.recommenders.values():
            for recommender in by_name.values():
                experiments = recommender.experiments
                for feature, experiment in experiments.items():
                    if not experiment.metrics:
                        continue  # nothing to convert to: every conversion is a 400
                    required = ["recommender"]
                    required += ["feature"] if len(experiments) > 1 else []
                    required += ["metric"] if len(experiment.metrics) > 1 else []
                    choices.append(
                        {
                            "required": required,
                            "properties": {
                                "recommender": {"const": recommender.name},
                                "feature": {"const": feature},
                                "metric": {"enum": sorted(experiment.metrics)},
                            },
                        }
                    )
    if not choices:
        return {"maxItems": 0, "description": "No experiments are configured."}
    unique = {json.dumps(c, sort_keys=True): c for c in choices}
    return {"items": {"anyOf": list(unique.values())}}


def _action_paths(config: Config, action: str, secured: bool) -> dict[str, Any]:
    """The path items of one recommender action. Over 60 lines because most of it is one
    literal, the operation as the document spells it; split, it would read less like the spec."""
    namespaces = sorted(key for key, ns in config.namespaces.items() if ns.recommenders.get(action))
    if not namespaces:
        return {}
    names = sorted(
        {name for key in namespaces for name in config.namespaces[key].recommenders[action]}
    )
    common = [
        _path_enum("namespace", namespaces, f"A namespace with `{action}` recommenders."),
        _path_enum(
            "recommender",
            names,
            f"A `{action}` recommender. The enum spans all namespaces; the pair must be "
            "configured together, else 404 `RecommenderNotConfigured`.",
        ),
    ]
    query = [_param_ref(name) for name in _QUERY_PARAMS]
    errors = _QUERY_ERRORS + (_AUTH_ERRORS if secured else ())
    user = _path_id("userId", "The user to recommend for.")
    if action == "recommend-items":
        return {
            "/recommend-items/{namespace}/{recommender}/{userId}": {
                "get": _query_op(
                    config,
                    "recommendItems",
                    "Recommend items for a user",
                    [*common, user, *query],
                    ITEM_LIST,
                    errors,
                )
            }
        }
    if action == "related-items":
        item = _path_id("itemId", "The item to find related items for.")
        return {
            "/related-items/{namespace}/{recommender}/{itemId}": {
                "get": _query_op(
                    config,
                    "relatedItems",
                    "Items related to an item",
                    [*common, item, *query, _param_ref("userIdQuery")],
                    ITEM_LIST,
                    errors,
                )
            }
        }
    item_ids = {
        "name": "itemIds",
        "in": "path",
        "required": True,
        "description": f"Comma-separated ids of the items to rank (1 to {MAX_ITEMS}).",
        "style": "simple",
        "explode": False,
        "schema": _id_list(in_path=True),
    }
    body = {
        "required": True,
        "description": "The ids of the items to rank, as a JSON array.",
        "content": {media: {"schema": _id_list()} for media in ("application/json", "text/plain")},
    }
    return {
        "/rerank-items/{namespace}/{recommender}/{userId}/{itemIds}": {
            "get": _query_op(
                config,
                "rerankItems",
                "Rank items for a user",
                [*common, user, item_ids, *query],
                RANKING,
                errors,
            )
        },
        "/rerank-items/{namespace}/{recommender}/{userId}": {
            "post": {
                **_query_op(
                    config,
                    "rerankItemsPost",
                    "Rank items for a user (ids in the body)",
                    [*common, user, *query],
                    RANKING,
                    (*errors, 413, 415),
                ),
                "requestBody": body,
            }
        },
    }


def _query_op(
    config: Config,
    operation_id: str,
    summary: str,
    parameters: list[dict[str, Any]],
    shape: str,
    errors: tuple[int, ...],
) -> dict[str, Any]:
    schema = "ItemList" if shape == ITEM_LIST else "Ranking"
    cache_headers = {
        "Cache-Control": _header("The `cacheControl` rule for this kind of request."),
        "ETag": _header("Tag for `If-None-Match`; bound to this URL, embeds its own expiry."),
    }
    return {
        "operationId": operation_id,
        "tags": ["recommendations"],
        "summary": summary,
        "parameters": [*parameters, _param_ref("IfNoneMatch")],
        "responses": {
            "200": _response(config, "The answer, best first.", _json_ref(schema), cache_headers),
            "304": _response(config, "Not modified: the `If-None-Match` tag is still fresh."),
            **_error_refs(errors),
        },
    }


def _health(operation_id: str, summary: str, schema: str, config: Config) -> dict[str, Any]:
    responses = {"200": _response(config, summary, _json_ref(schema))}
    if operation_id == "readyz":
        responses["503"] = _response(config, "The stream is unreachable.", _json_ref(schema))
    return {
        "operationId": operation_id,
        "tags": ["operations"],
        "summary": summary,
        "security": [],  # probes carry no key (see web.admission.PUBLIC_PATHS)
        "responses": responses,
    }


def _metrics(config: Config, secured: bool) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "operationId": "metrics",
        "tags": ["operations"],
        "summary": "Prometheus metrics (text exposition format)",
        "responses": {
            "200": _response(config, "Metrics.", text),
            **_error_refs(_AUTH_ERRORS if secured else ()),
        },
    }


# -- parameters ---------------------------------------------------------------------------------

# The query-string parameters the query path reads (``userId`` is a path segment on most routes;
# related-items reads it from the query string, documented there as ``userIdQuery``).
_QUERY_PARAMS = tuple(name for name in KNOWN if name != "userId")


def _path_enum(name: str, values: list[str], description: str) -> dict[str, Any]:
    # An empty enum would be an invalid schema; with nothing configured any string is a 404.
    schema: dict[str, Any] = {"type": "string", "enum": values} if values else {"type": "string"}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _path_id(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _id(),
    }


def _parameters() -> dict[str, Any]:
    """The shared ``components.parameters``: one literal, a table of the query and path
    parameters (long because there are that many of them, not because it branches)."""
    flag_words = "`1`, `yes` or `true` (any case) mean yes; any other value means no."
    string_map = {
        "type": "object",
        "maxProperties": MAX_MAP_ENTRIES,
        "propertyNames": {"maxLength": MAX_ID},
        "additionalProperties": {"type": "string", "maxLength": MAX_MAP_VALUE},
    }

    def query(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"name": name, "in": "query", "description": description, "schema": schema, **extra}

    def json_query(name: str, description: str) -> dict[str, Any]:
        # Sent as one JSON-encoded string: `content` (not `schema`) says exactly that.
        return {
            "name": name,
            "in": "query",
            "description": description,
            "content": {"application/json": {"schema": string_map}},
        }

    return {
        "numResults": query(
            "numResults",
            f"How many items to return; above {MAX_RESULTS} it is {MAX_RESULTS} (as the sample "
            "project capped it).",
            {"type": "integer", "minimum": 1, "default": DEFAULT_RESULTS},
        ),
        "filter": query(
            "filter", "A Personalize filter to apply: its name or its ARN.", _optional_id()
        ),
        "filterValues": json_query(
            "filterValues", "Dynamic filter values: a JSON object of strings."
        ),
        "context": json_query(
            "context", "Contextual metadata for the recommender: a JSON object of strings."
        ),
        "decorateItems": query(
            "decorateItems",
            f"Add item metadata to the items (default yes). {flag_words}",
            {"type": "string", "default": "true"},
        ),
        "syntheticUser": query(
            "syntheticUser",
            f"The user id is synthetic: cache the answer as public. {flag_words}",
            {"type": "string", "default": "false"},
        ),
        "feature": query(
            "feature",
            "An experiment feature of the recommender to evaluate. Ignored (as by the sample) "
            "unless the recommender has experiments and more than one variation and a user is "
            "given; then an unknown feature is a 400 `InvalidExperimentFeature`.",
            _optional_id(),
        ),
        "userIdQuery": query("userId", "The user, to personalize related items.", _optional_id()),
        "IfNoneMatch": {
            "name": "If-None-Match",
            "in": "header",
            "description": "An ETag from an earlier answer: 304 while it is fresh.",
            "schema": {"type": "string"},
        },
    }


def _param_ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/parameters/{name}"}


# -- schemas and responses ----------------------------------------------------------------------


def _id() -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_ID}


def _optional_id() -> dict[str, Any]:
    # The service reads an empty query parameter as an absent one.
    return {"type": "string", "maxLength": MAX_ID, "description": "Empty means absent."}


def _id_list(in_path: bool = False) -> dict[str, Any]:
    # In the path the list is comma-separated: an id there cannot hold a comma.
    item = {**_id(), "pattern": "^[^,]+$"} if in_path else _id()
    return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_ITEMS}


def _schemas() -> dict[str, Any]:
    """The shared ``components.schemas``: the events body from its msgspec types, the rest one
    literal (long for the number of schemas, not for its logic)."""
    _, body = msgspec.json.schema_components([EventsBody], ref_template=REF)
    items = {
        "type": "array",
        "items": {"$ref": REF.format(name="Item")},
        "description": "Best first, at most `numResults`.",
    }
    answer = {
        "recommendationId": {"type": "string"},
        "matchedExperiment": {"$ref": REF.format(name="MatchedExperiment")},
    }
    return {
        "Error": {
            "type": "object",
            "description": "Every error response has this body; no stack trace, ever.",
            "required": ["type", "code", "message"],
            "properties": {
                "type": {"type": "string", "enum": ERROR_TYPES},
                "code": {
                    "type": "string",
                    "examples": ["InvalidJSONRequestPayload", "NamespaceNotFound"],
                },
                "message": {"type": "string"},
            },
            "additionalProperties": False,
        },
        **dict(sorted(body.items())),
        "Accepted": {
            "type": "object",
            "required": ["accepted", "recordId"],
            "properties": {
                "accepted": {"type": "integer", "minimum": 0, "description": "Events recorded."},
                "recordId": {
                    "type": ["string", "null"],
                    "description": "The stream record's id; null when there was nothing to record.",
                },
            },
        },
        "Item": {
            "type": "object",
            "required": ["itemId"],
            "properties": {
                "itemId": {"type": "string"},
                "score": {"type": "number"},
                "promotionName": {"type": "string"},
                "metadata": {"type": "object", "description": "With `decorateItems`."},
            },
        },
        "MatchedExperiment": {
            "type": "object",
            "description": "Present when an experiment chose the variation that answered.",
            "required": ["type", "feature", "details", "method", "variation"],
            "properties": {
                "type": {"type": "string", "description": "The method (the sample's key)."},
                "feature": {"type": "string"},
                "details": {
                    "type": "object",
                    "description": "The sample's details: the experiment and its treatment.",
                    "required": ["experiment", "treatment"],
                    "properties": {
                        "experiment": {"type": "string"},
                        "treatment": {"type": "string"},
                    },
                },
                "method": {"type": "string"},
                "variation": {"type": "string"},
            },
        },
        "ItemList": {
            "type": "object",
            "required": [ITEM_LIST],
            "properties": {ITEM_LIST: items, **answer},
        },
        "Ranking": {
            "type": "object",
            "required": [RANKING],
            "properties": {RANKING: items, **answer},
        },
        "Liveness": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "degraded", "unavailable"]},
                "reason": {"type": "string"},
                "targets": {
                    "type": "object",
                    "description": "Consumer groups run by this process: state "
                    "(starting, standby, running, paused, restarting, stopped), since, reason",
                    "additionalProperties": {"type": "object"},
                },
            },
        },
    }


def _components(config: Config, secured: bool) -> dict[str, Any]:
    responses = {}
    for status, (name, description) in sorted(_ERRORS.items()):
        headers = {}
        if status in _RETRY_AFTER:
            headers["Retry-After"] = _header("Seconds to wait before retrying.", "integer")
        responses[name] = _response(config, description, _json_ref("Error"), headers)
    components: dict[str, Any] = {
        "schemas": _schemas(),
        "parameters": _parameters(),
        "responses": responses,
    }
    if config.version is not None:
        components["headers"] = {
            VERSION_HEADER: _header(f"Version of the config that answered ({config.version}).")
        }
    if secured:
        components["securitySchemes"] = {
            API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": "x-api-key"}
        }
    return components


def _response(
    config: Config,
    description: str,
    content: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    all_headers = dict(headers or {})
    if config.version is not None:
        all_headers[VERSION_HEADER] = {"$ref": f"#/components/headers/{VERSION_HEADER}"}
    if all_headers:
        response["headers"] = all_headers
    if content is not None:
        response["content"] = content
    return response


def _json_ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(name=name)}}}


def _header(description: str, type_: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": type_}}


def _error_refs(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {
        str(status): {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
        for status in sorted(statuses)
    }
