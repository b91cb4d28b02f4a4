"""Request parameters of the three recommendation actions, validated into a ``Query``.

The HTTP layer hands over plain values (path parameters, the query string as a mapping of
first values, the raw body of ``POST /rerank-items``); everything a caller can get wrong is
a ``InvalidRequest`` (400) naming the parameter, with the sample project's code where it had
one (``InvalidContextParameter``, ``InvalidFilterParameter``, ``InvalidJSONRequestPayload``,
``InvalidRequestPayload``) and ``Invalid<Name>Parameter`` otherwise. Limits follow Personalize's
runtime API: ids ≤ 256 characters, ``inputList`` 1 to 500 ids; ``numResults`` from 1, and above
500 it is 500 (the sample's cap, Personalize's maximum). ``context`` and ``filterValues`` are
JSON objects of strings, as the OpenAPI says (Personalize takes strings only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from query.base import DEFAULT_RESULTS, MAX_RESULTS, Query
from schemas.errors import InvalidRequest

MAX_ID = 256
MAX_ITEMS = 500
TRUE_WORDS = frozenset({"1", "yes", "true"})
MAX_MAP_ENTRIES = 50
MAX_MAP_VALUE = 1000
# Parameters that change the answer; anything else in the query string is ignored (and kept
# out of the cache key, so a cache-busting parameter cannot multiply entries).
KNOWN = (
    "numResults",
    "filter",
    "filterValues",
    "context",
    "decorateItems",
    "syntheticUser",
    "feature",
    "userId",
)


def parse(
    action: str,
    namespace: str,
    recommender: str,
    path: Mapping[str, str],
    params: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes | None = None,
) -> Query:
    """The ``Query`` for one request (auto-context and look-ahead are applied later)."""
    user_id: str | None
    item_id: str | None = None
    item_ids: tuple[str, ...] = ()
    if action == "related-items":
        item_id = _id(path["itemId"], "itemId")
        user_id = _optional_id(params.get("userId"), "userId")
    else:
        user_id = _id(path["userId"], "userId")
        if action == "rerank-items":
            item_ids = _item_ids(path.get("itemIds"), body)
    return Query(
        action=action,
        namespace=namespace,
        recommender=recommender,
        user_id=user_id,
        item_id=item_id,
        item_ids=item_ids,
        num_results=_num_results(params.get("numResults")),
        filter=_optional_id(params.get("filter"), "filter"),
        filter_values=_string_map(
            params.get("filterValues"), "filterValues", "InvalidFilterParameter"
        ),
        context=_string_map(params.get("context"), "context", "InvalidContextParameter"),
        synthetic_user=_flag(params.get("syntheticUser"), default=False),
        feature=_optional_id(params.get("feature"), "feature"),
        decorate=_flag(params.get("decorateItems"), default=True),
        headers=headers,
    )


def normalised(params: Mapping[str, str]) -> str:
    """The known parameters in a fixed order: two URLs that ask the same thing get one key."""
    return "&".join(f"{key}={params[key]}" for key in KNOWN if key in params)


def _code(name: str) -> str:
    return (
        "InvalidFilterParameter"
        if name == "filter"
        else f"Invalid{name[0].upper()}{name[1:]}Parameter"
    )


def _id(value: str, name: str) -> str:
    if not value:
        raise InvalidRequest(f"{name} must not be empty", code=_code(name))
    if len(value) > MAX_ID:
        raise InvalidRequest(
            f"{name} is {len(value)} characters; at most {MAX_ID} are allowed", code=_code(name)
        )
    return value


def _optional_id(value: str | None, name: str) -> str | None:
    return None if value is None or value == "" else _id(value, name)


def _num_results(value: str | None) -> int:
    if value is None:
        return DEFAULT_RESULTS
    code = "InvalidNumResultsParameter"
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest("numResults must be a positive integer", code=code) from None
    if number < 1:
        raise InvalidRequest(f"numResults must be at least 1, got {number}", code=code)
    return min(number, MAX_RESULTS)


def _flag(value: str | None, *, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in TRUE_WORDS


def _string_map(value: str | None, name: str, code: str) -> Mapping[str, str]:
    if value is None or value == "":
        return MappingProxyType({})
    try:
        parsed: Any = json.loads(value)
    except ValueError as exc:
        raise InvalidRequest(f'Parameter "{name}" is not valid JSON: {exc}', code=code) from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{name} must be a JSON object of strings", code=code)
    if len(parsed) > MAX_MAP_ENTRIES:
        raise InvalidRequest(
            f"{name} has {len(parsed)} entries; at most {MAX_MAP_ENTRIES}", code=code
        )
    for key, item in parsed.items():
        # Personalize takes strings only: a number would be refused there, after the call.
        if not isinstance(item, str):
            raise InvalidRequest(
                f'{name}.{key} must be a string (a number goes as its text, e.g. "5")',
                code=code,
            )
        if len(key) > MAX_ID or len(item) > MAX_MAP_VALUE:
            raise InvalidRequest(f"{name}.{key} is too long", code=code)
    return MappingProxyType(parsed)


def _item_ids(in_path: str | None, body: bytes | None) -> tuple[str, ...]:
    if in_path is not None:
        ids: Any = in_path.split(",")
        where = "itemIds"
    else:
        where = "request body"
        try:
            ids = json.loads(body or b"")
        except ValueError as exc:
            raise InvalidRequest(
                f"{where} is not valid JSON: {exc}", code="InvalidJSONRequestPayload"
            ) from None
        if not isinstance(ids, list):
            raise InvalidRequest(
                f"{where} must be a JSON array of item ids", code="InvalidRequestPayload"
            )
    code = "InvalidItemIdsParameter" if in_path is not None else "InvalidRequestPayload"
    if not ids or ids == [""]:
        raise InvalidRequest(f"{where} must name at least one item", code=code)
    if len(ids) > MAX_ITEMS:
        raise InvalidRequest(
            f"{where} has {len(ids)} items; at most {MAX_ITEMS} can be reranked", code=code
        )
    for index, item in enumerate(ids):
        if not isinstance(item, str) or not item or len(item) > MAX_ID:
            raise InvalidRequest(
                f"{where}[{index}] must be an item id of 1 to {MAX_ID} characters", code=code
            )
    return tuple(ids)
