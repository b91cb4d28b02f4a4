"""Auto-context: request headers and the clock turned into context values.

Used for a level's ``autoContext`` and a Personalize filter's ``autoDynamicFilterValues``; both map
a name to a field ``{type, default?, evaluateAll?, rules}``. The config dict is parsed once by
:meth:`AutoContext.from_config` into frozen objects (it is assumed schema-valid; an unknown type or
operator still raises ``ConfigError``).

Contract:

- Headers: names are matched case-insensitively; every value is cut to 256 characters before use.
  A missing header yields nothing.
- Time: ``hour-of-day`` (0-23) and ``day-of-week`` (Monday = 0) come from ``now`` *converted* to the
  IANA zone named by ``cloudfront-viewer-time-zone``; a missing or unknown zone means UTC, a naive
  ``now`` is taken as UTC. ``season-of-year`` is 0 spring (from 21 March), 1 summer (21 June),
  2 fall (23 September), 3 winter (23 December) by the viewer-local date, shifted by two seasons
  when ``cloudfront-viewer-latitude`` parses as a negative number (unparsable means northern).
- Mappings: the first mapping that matches gives its ``mapTo``; none matching, the rule yields
  nothing; an empty or absent ``valueMappings`` passes the raw value through. ``equals`` compares
  numbers when both sides are finite numbers, else strings; ``less-than``/``greater-than`` need
  numbers on both sides; ``contains``/``starts-with`` (alias ``start-with``)/``ends-with`` work on
  the string forms.
- Fields: rules run in order; the first value wins unless ``evaluateAll``, which collects every
  rule's value (deduplicated, in order). Values are cast to the field type (``integer``/``long``
  accept ``"3"`` and ``3.0``, not ``3.5``); an uncastable value is dropped. No value: the cast
  ``default`` if any, else the field is absent.
- Output: :meth:`~AutoContext.for_event` joins string values with ``|`` and takes the first of
  numeric ones; :meth:`~AutoContext.for_context` gives strings joined with ``,``;
  :meth:`~AutoContext.for_filter_values` wraps string values in double quotes joined with ``,``
  (a value containing ``"`` cannot be quoted safely and is left out) and gives numbers plainly.
  Merging into what the caller set is the caller's job.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from typing import Any, Literal, cast, get_args
from zoneinfo import ZoneInfo

from schemas.errors import ConfigError

Scalar = str | int | float
FieldType = Literal["string", "integer", "long", "float"]
RuleType = Literal["header-value", "hour-of-day", "day-of-week", "season-of-year"]
Operator = Literal["equals", "less-than", "greater-than", "contains", "starts-with", "ends-with"]

MAX_HEADER_LENGTH = 256
TIME_ZONE_HEADER = "cloudfront-viewer-time-zone"
LATITUDE_HEADER = "cloudfront-viewer-latitude"

_FIELD_TYPES: tuple[str, ...] = get_args(FieldType)
_RULE_TYPES: tuple[str, ...] = get_args(RuleType)
_OPERATORS: tuple[str, ...] = get_args(Operator)
# (month, day, season) from the latest start backwards; before 21 March it is still winter.
_SEASON_STARTS = ((12, 23, 3), (9, 23, 2), (6, 21, 1), (3, 21, 0))


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return cast(str, value)


def _number(value: object) -> float | None:
    """The finite number ``value`` denotes, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _cast(value: Scalar, field_type: str) -> Scalar | None:
    if field_type == "string":
        return _text(value)
    number = _number(value)
    if number is None:
        return None
    if field_type == "float":
        return number
    if isinstance(value, int):  # keep big ints exact
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    return int(number) if number.is_integer() else None


@dataclass(frozen=True)
class ValueMapping:
    operator: Operator
    value: Scalar
    map_to: Scalar

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], where: str) -> ValueMapping:
        operator = spec.get("operator")
        operator = "starts-with" if operator == "start-with" else operator
        return cls(
            operator=cast(Operator, _choice(operator, _OPERATORS, f"{where}.operator")),
            value=spec.get("value", ""),
            map_to=spec.get("mapTo", ""),
        )

    def matches(self, raw: Scalar) -> bool:
        if self.operator in ("equals", "less-than", "greater-than"):
            left, right = _number(raw), _number(self.value)
            if left is not None and right is not None:
                if self.operator == "equals":
                    return left == right
                return left < right if self.operator == "less-than" else left > right
            return self.operator == "equals" and _text(raw) == _text(self.value)
        text, needle = _text(raw), _text(self.value)
        if self.operator == "contains":
            return needle in text
        if self.operator == "starts-with":
            return text.startswith(needle)
        return text.endswith(needle)


class _Request:
    """One request as the rules see it: normalised headers and, on first use, the local time."""

    def __init__(self, headers: Mapping[str, str], now: datetime) -> None:
        self.headers = {name.lower(): value[:MAX_HEADER_LENGTH] for name, value in headers.items()}
        self.now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    @cached_property
    def local_time(self) -> datetime:
        zone: tzinfo = UTC
        name = self.headers.get(TIME_ZONE_HEADER, "").strip()
        if name:
            try:
                zone = ZoneInfo(name)
            except (KeyError, ValueError, OSError):  # unknown, malformed or unreadable zone
                zone = UTC
        try:
            return self.now.astimezone(zone)
        except OverflowError:
            return self.now

    @cached_property
    def southern(self) -> bool:
        latitude = _number(self.headers.get(LATITUDE_HEADER, "").strip())
        return latitude is not None and latitude < 0


@dataclass(frozen=True)
class Rule:
    type: RuleType
    header: str | None = None
    value_mappings: tuple[ValueMapping, ...] = ()

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], where: str) -> Rule:
        rule_type = cast(RuleType, _choice(spec.get("type"), _RULE_TYPES, f"{where}.type"))
        header = spec.get("header") if rule_type == "header-value" else None
        if rule_type == "header-value" and not isinstance(header, str):
            raise ConfigError(f"{where}.header: a header-value rule needs a header name")
        mappings = spec.get("valueMappings") or ()
        return cls(
            type=rule_type,
            header=header.lower() if isinstance(header, str) else None,
            value_mappings=tuple(
                ValueMapping.from_config(m, f"{where}.valueMappings[{i}]")
                for i, m in enumerate(mappings)
            ),
        )

    def _raw(self, request: _Request) -> Scalar | None:
        if self.type == "header-value":
            return request.headers.get(self.header or "")
        local = request.local_time
        if self.type == "hour-of-day":
            return local.hour
        if self.type == "day-of-week":
            return local.weekday()
        month_day = (local.month, local.day)
        season = next((s for m, d, s in _SEASON_STARTS if month_day >= (m, d)), 3)
        return (season + 2) % 4 if request.southern else season

    def _evaluate(self, request: _Request) -> Scalar | None:
        raw = self._raw(request)
        if raw is None or not self.value_mappings:
            return raw
        return next((m.map_to for m in self.value_mappings if m.matches(raw)), None)


@dataclass(frozen=True)
class ContextField:
    name: str
    type: FieldType
    rules: tuple[Rule, ...]
    default: Scalar | None = None
    evaluate_all: bool = False

    @classmethod
    def from_config(cls, name: str, spec: Mapping[str, Any]) -> ContextField:
        field_type = cast(FieldType, _choice(spec.get("type"), _FIELD_TYPES, f"{name}.type"))
        return cls(
            name=name,
            type=field_type,
            rules=tuple(
                Rule.from_config(rule, f"{name}.rules[{i}]")
                for i, rule in enumerate(spec.get("rules") or ())
            ),
            default=spec.get("default"),
            evaluate_all=bool(spec.get("evaluateAll", False)),
        )

    def _values(self, request: _Request) -> tuple[Scalar, ...]:
        found: list[Scalar] = []
        for rule in self.rules:
            raw = rule._evaluate(request)
            value = None if raw is None else _cast(raw, self.type)
            if value is None:
                continue
            if value not in found:
                found.append(value)
            if not self.evaluate_all:
                break
        if not found and self.default is not None:
            default = _cast(self.default, self.type)
            if default is not None:
                found.append(default)
        return tuple(found)


# How many distinct inputs (header values, minute) an AutoContext remembers the result of.
MEMO_SIZE = 4096
# The fields that have a value, with all their (cast) values in order.
_Resolved = tuple[tuple[ContextField, tuple[Scalar, ...]], ...]


@dataclass(frozen=True)
class AutoContext:
    """The fields of one ``autoContext`` (or ``autoDynamicFilterValues``) object.

    The result for a request is remembered, keyed by what it depends on: the values of the
    headers its rules read and, when a rule reads the clock, the minute. Local time in any zone
    whose offset is a whole number of minutes (every zone since 1972) keeps its hour, weekday and
    date through a UTC minute, so the key decides the result. Requests mostly repeat a handful of
    header combinations, and evaluating the rules again cost more than the rest of an event's
    validation. The memory is bounded (``MEMO_SIZE``, emptied when full) and dies with the config.
    """

    fields: tuple[ContextField, ...] = ()
    # key -> the fields' values, and ``for_event``'s properties made of them (every event asks)
    _memo: dict[Any, tuple[_Resolved, dict[str, Scalar]]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> AutoContext:
        """Parse an ``autoContext`` / ``autoDynamicFilterValues`` object; None gives an empty one."""
        if not config:
            return cls()
        return cls(tuple(ContextField.from_config(name, spec) for name, spec in config.items()))

    @cached_property
    def _inputs(self) -> tuple[frozenset[str], tuple[str, ...], bool]:
        """The header names the rules read (lower case), in a fixed order, and whether any
        rule reads the clock (and with it the time zone and latitude headers)."""
        rules = [rule for context_field in self.fields for rule in context_field.rules]
        timed = any(rule.type != "header-value" for rule in rules)
        names = {rule.header for rule in rules if rule.header is not None}
        if timed:
            names |= {TIME_ZONE_HEADER, LATITUDE_HEADER}
        return frozenset(names), tuple(sorted(names)), timed

    def _key(self, headers: Mapping[str, str], now: datetime) -> Any:
        wanted, order, timed = self._inputs
        found: dict[str, str] = {}
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in wanted:  # the last of duplicate names wins, as in _Request
                found[lowered] = value[:MAX_HEADER_LENGTH]
        minute = None
        if timed:
            minute = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).replace(
                second=0, microsecond=0
            )
        return tuple(found.get(name) for name in order), minute

    def _known(
        self, headers: Mapping[str, str], now: datetime
    ) -> tuple[_Resolved, dict[str, Scalar]]:
        key = self._key(headers, now)
        known = self._memo.get(key)
        if known is None:
            request = _Request(headers, now)
            resolved = tuple(
                (context_field, values)
                for context_field in self.fields
                if (values := context_field._values(request))
            )
            event = {
                field.name: "|".join(map(_text, values)) if field.type == "string" else values[0]
                for field, values in resolved
            }
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            known = self._memo[key] = (resolved, event)
        return known

    def _resolved(self, headers: Mapping[str, str], now: datetime) -> _Resolved:
        if not self.fields:  # most recommenders: not even the headers need normalising
            return ()
        return self._known(headers, now)[0]

    def resolve(self, headers: Mapping[str, str], now: datetime) -> dict[str, tuple[Scalar, ...]]:
        """Every field that has a value, with all its (cast) values in order."""
        return {field.name: values for field, values in self._resolved(headers, now)}

    def for_event(self, headers: Mapping[str, str], now: datetime) -> dict[str, Scalar]:
        """Event ``properties`` values: strings joined with ``|``, numbers their first value
        (remembered with the values; each caller gets a copy of its own)."""
        if not self.fields:
            return {}
        return dict(self._known(headers, now)[1])

    def for_context(self, headers: Mapping[str, str], now: datetime) -> dict[str, str]:
        """Personalize inference ``context``: every value as a string, joined with ``,``."""
        return {
            field.name: ",".join(map(_text, values))
            for field, values in self._resolved(headers, now)
        }

    def for_filter_values(self, headers: Mapping[str, str], now: datetime) -> dict[str, str]:
        """Personalize ``filterValues``: strings as ``"a","b"``, numbers as ``1,2``."""
        result: dict[str, str] = {}
        for field, values in self._resolved(headers, now):
            if field.type == "string":
                quoted = [f'"{value}"' for value in map(_text, values) if '"' not in value]
                if quoted:
                    result[field.name] = ",".join(quoted)
            else:
                result[field.name] = ",".join(map(_text, values))
        return result
