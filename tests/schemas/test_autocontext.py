"""Auto-context: headers and the clock become context values, events and filter values."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.autocontext import AutoContext, ContextField, Rule, ValueMapping
from schemas.errors import ConfigError

NOW = datetime(2026, 6, 1, 23, 30, tzinfo=UTC)  # a Monday

# The autoContext and the filter's autoDynamicFilterValues of the sample's config_auto_context.json.
SAMPLE_AUTO_CONTEXT: dict[str, Any] = {
    "deviceType": {
        "type": "string",
        "default": "Desktop",
        "evaluateAll": True,
        "rules": [
            {
                "type": "header-value",
                "header": f"cloudfront-is-{header}-viewer",
                "valueMappings": [{"operator": "equals", "value": "true", "mapTo": device}],
            }
            for header, device in [
                ("desktop", "Desktop"),
                ("mobile", "Phone"),
                ("smarttv", "TV"),
                ("tablet", "Tablet"),
            ]
        ],
    },
    "timeOfDay": {
        "type": "string",
        "evaluateAll": False,
        "rules": [
            {
                "type": "hour-of-day",
                "valueMappings": [
                    {"operator": "less-than", "value": 4, "mapTo": "Night"},
                    {"operator": "less-than", "value": 11, "mapTo": "Morning"},
                    {"operator": "less-than", "value": 18, "mapTo": "Afternoon"},
                    {"operator": "less-than", "value": 22, "mapTo": "Evening"},
                    {"operator": "greater-than", "value": 21, "mapTo": "Night"},
                ],
            }
        ],
    },
    "city": {
        "type": "string",
        "rules": [{"type": "header-value", "header": "cloudfront-viewer-city"}],
    },
}
SAMPLE_FILTER_VALUES: dict[str, Any] = {
    "METRO_CODE": {
        "type": "string",
        "rules": [{"type": "header-value", "header": "cloudfront-viewer-metro-code"}],
    }
}


def cloudfront_headers(**overrides: str) -> dict[str, str]:
    """Headers as CloudFront forwards them for a desktop viewer in Seattle."""
    headers = {
        "Host": "api.example.com",
        "User-Agent": "Mozilla/5.0",
        "CloudFront-Is-Desktop-Viewer": "true",
        "CloudFront-Is-Mobile-Viewer": "false",
        "CloudFront-Is-SmartTV-Viewer": "false",
        "CloudFront-Is-Tablet-Viewer": "false",
        "CloudFront-Viewer-City": "Seattle",
        "CloudFront-Viewer-Metro-Code": "819",
        "CloudFront-Viewer-Latitude": "47.60620",
        "CloudFront-Viewer-Time-Zone": "America/Los_Angeles",
    }
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return headers


def one_field(field_type: str = "string", **spec: Any) -> AutoContext:
    return AutoContext.from_config({"f": {"type": field_type, **spec}})


def header_rule(header: str = "x-v", *mappings: tuple[str, Any, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {"type": "header-value", "header": header}
    if mappings:
        rule["valueMappings"] = [{"operator": o, "value": v, "mapTo": m} for o, v, m in mappings]
    return rule


def time_rule(rule_type: str) -> dict[str, Any]:
    return {"type": rule_type}


# --- parsing ------------------------------------------------------------------------------------


def test_none_and_empty_config_resolve_to_nothing() -> None:
    configs: tuple[dict[str, Any] | None, ...] = (None, {})
    for config in configs:
        auto = AutoContext.from_config(config)
        assert auto == AutoContext()
        assert auto.resolve(cloudfront_headers(), NOW) == {}
        assert auto.for_event(cloudfront_headers(), NOW) == {}


def test_config_is_parsed_into_frozen_objects() -> None:
    auto = AutoContext.from_config(
        {
            "Device": {
                "type": "string",
                "default": "Desktop",
                "evaluateAll": True,
                "rules": [header_rule("X-Device", ("start-with", "Pho", "Phone"))],
            }
        }
    )
    assert auto.fields == (
        ContextField(
            name="Device",
            type="string",
            default="Desktop",
            evaluate_all=True,
            rules=(
                Rule(
                    type="header-value",
                    header="x-device",
                    value_mappings=(ValueMapping("starts-with", "Pho", "Phone"),),
                ),
            ),
        ),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        auto.fields[0].default = "TV"  # type: ignore[misc]


@pytest.mark.parametrize(
    "config",
    [
        {"f": {"type": "bool", "rules": []}},
        {"f": {"type": "string", "rules": [{"type": "moon-phase"}]}},
        {"f": {"type": "string", "rules": [{"type": "header-value"}]}},
        {"f": {"type": "string", "rules": [header_rule("x", ("matches", "a", "b"))]}},
    ],
    ids=["field type", "rule type", "header missing", "operator"],
)
def test_unknown_config_values_are_config_errors(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AutoContext.from_config(config)


# --- operators ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "value", "raw", "matches"),
    [
        ("equals", "true", "true", True),
        ("equals", "true", "True", False),
        ("equals", 3, "3", True),
        ("equals", "3", "03.0", True),  # both numbers: compared as numbers
        ("equals", 3, "three", False),
        ("less-than", 11, "10", True),
        ("less-than", 11, "11", False),
        ("less-than", "11", "2", True),  # numeric, not lexicographic
        ("less-than", 11, "ten", False),  # a non-number never matches
        ("less-than", "eleven", "3", False),
        ("greater-than", 21, "22", True),
        ("greater-than", 21, "21", False),
        ("greater-than", 21, "many", False),
        ("contains", "Phone", "iPhone 15", True),
        ("contains", "phone", "iPhone 15", False),
        ("contains", 5, "iPhone 15", True),
        ("starts-with", "Mozilla/", "Mozilla/5.0", True),
        ("starts-with", "5.0", "Mozilla/5.0", False),
        ("start-with", "Mozilla/", "Mozilla/5.0", True),
        ("start-with", "5.0", "Mozilla/5.0", False),
        ("ends-with", "5.0", "Mozilla/5.0", True),
        ("ends-with", "Mozilla", "Mozilla/5.0", False),
    ],
)
def test_operator(operator: str, value: Any, raw: str, matches: bool) -> None:
    # GIVEN a rule mapping header x-v with one operator
    auto = one_field(rules=[header_rule("x-v", (operator, value, "hit"))])
    # WHEN the header carries the raw value
    resolved = auto.resolve({"x-v": raw}, NOW)
    # THEN the field is the mapTo exactly when the operator matches
    assert resolved == ({"f": ("hit",)} if matches else {})


def test_first_matching_mapping_wins() -> None:
    auto = one_field(
        rules=[header_rule("x-v", ("contains", "a", "first"), ("contains", "ab", "second"))]
    )
    assert auto.resolve({"x-v": "abc"}, NOW) == {"f": ("first",)}
    assert auto.resolve({"x-v": "xyz"}, NOW) == {}


def test_numeric_operators_apply_to_time_values() -> None:
    mapping = {"operator": "equals", "value": "23", "mapTo": "late"}
    auto = one_field(rules=[{"type": "hour-of-day", "valueMappings": [mapping]}])
    assert auto.resolve({}, NOW) == {"f": ("late",)}


# --- rule types ---------------------------------------------------------------------------------


def test_header_value_without_mappings_is_the_header() -> None:
    auto = one_field(rules=[header_rule("cloudfront-viewer-city")])
    assert auto.resolve(cloudfront_headers(), NOW) == {"f": ("Seattle",)}
    assert auto.resolve({}, NOW) == {}


def test_empty_value_mappings_pass_the_raw_value_through() -> None:
    auto = one_field(rules=[{"type": "header-value", "header": "x-v", "valueMappings": []}])
    assert auto.resolve({"x-v": "raw"}, NOW) == {"f": ("raw",)}


def test_header_names_are_case_insensitive() -> None:
    auto = one_field(rules=[header_rule("X-Device-TYPE")])
    assert auto.resolve({"x-device-type": "a"}, NOW) == {"f": ("a",)}
    assert auto.resolve({"X-DEVICE-type": "b"}, NOW) == {"f": ("b",)}


def test_header_values_are_capped_at_256_characters() -> None:
    # GIVEN a 300-character header and a mapping on its tail
    auto = one_field(rules=[header_rule("x-v")])
    tail = one_field(rules=[header_rule("x-v", ("ends-with", "Z", "tail seen"))])
    value = "a" * 255 + "b" + "Z" * 44
    # WHEN it is evaluated
    # THEN only the first 256 characters are ever used
    assert auto.resolve({"x-v": value}, NOW) == {"f": ("a" * 255 + "b",)}
    assert tail.resolve({"x-v": value}, NOW) == {}


def test_hour_of_day_is_utc_without_a_time_zone() -> None:
    assert one_field("integer", rules=[time_rule("hour-of-day")]).resolve({}, NOW) == {"f": (23,)}


def test_hour_of_day_is_converted_to_the_viewer_time_zone() -> None:
    # GIVEN 23:30 UTC and a viewer in New York (EDT, UTC-4)
    auto = one_field("integer", rules=[time_rule("hour-of-day")])
    headers = {"CloudFront-Viewer-Time-Zone": "America/New_York"}
    # THEN the hour is the viewer's 19, not the server's 23
    assert auto.resolve(headers, NOW) == {"f": (19,)}


def test_day_of_week_changes_across_midnight_in_the_viewer_zone() -> None:
    auto = one_field("integer", rules=[time_rule("day-of-week")])
    assert auto.resolve({}, NOW) == {"f": (0,)}  # Monday in UTC
    # 23:30 UTC Monday is 08:30 Tuesday in Tokyo
    assert auto.resolve({"cloudfront-viewer-time-zone": "Asia/Tokyo"}, NOW) == {"f": (1,)}


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", " "])
def test_unknown_time_zone_falls_back_to_utc(zone: str) -> None:
    auto = one_field("integer", rules=[time_rule("hour-of-day")])
    assert auto.resolve({"cloudfront-viewer-time-zone": zone}, NOW) == {"f": (23,)}


def test_naive_now_is_taken_as_utc() -> None:
    auto = one_field("integer", rules=[time_rule("hour-of-day")])
    headers = {"cloudfront-viewer-time-zone": "America/New_York"}
    assert auto.resolve(headers, NOW.replace(tzinfo=None)) == {"f": (19,)}


@pytest.mark.parametrize(
    ("month", "day", "season"),
    [
        (1, 1, 3),
        (3, 20, 3),
        (3, 21, 0),
        (6, 20, 0),
        (6, 21, 1),
        (9, 22, 1),
        (9, 23, 2),
        (12, 22, 2),
        (12, 23, 3),
        (12, 31, 3),
    ],
)
def test_season_boundaries(month: int, day: int, season: int) -> None:
    auto = one_field("integer", rules=[time_rule("season-of-year")])
    now = datetime(2026, month, day, 12, tzinfo=UTC)
    assert auto.resolve({}, now) == {"f": (season,)}
    # THEN south of the equator the season is two seasons on
    southern = {"cloudfront-viewer-latitude": "-33.8"}
    assert auto.resolve(southern, now) == {"f": ((season + 2) % 4,)}


@pytest.mark.parametrize("latitude", ["47.6", "0", "north", "", "nan"])
def test_non_negative_or_unparsable_latitude_is_northern(latitude: str) -> None:
    auto = one_field("integer", rules=[time_rule("season-of-year")])
    assert auto.resolve({"cloudfront-viewer-latitude": latitude}, NOW) == {"f": (0,)}


def test_season_uses_the_viewer_local_date() -> None:
    # 20 March 23:30 UTC is already 21 March (spring) in Tokyo
    auto = one_field("integer", rules=[time_rule("season-of-year")])
    now = datetime(2026, 3, 20, 23, 30, tzinfo=UTC)
    assert auto.resolve({}, now) == {"f": (3,)}
    assert auto.resolve({"cloudfront-viewer-time-zone": "Asia/Tokyo"}, now) == {"f": (0,)}


# --- field evaluation ---------------------------------------------------------------------------

THREE_RULES = [header_rule("x-a"), header_rule("x-b"), header_rule("x-c")]


def test_without_evaluate_all_the_first_rule_with_a_value_wins() -> None:
    auto = one_field(rules=THREE_RULES)
    assert auto.resolve({"x-b": "b", "x-c": "c"}, NOW) == {"f": ("b",)}


def test_evaluate_all_collects_every_value_deduplicated_in_order() -> None:
    auto = one_field(evaluateAll=True, rules=THREE_RULES)
    assert auto.resolve({"x-c": "c", "x-a": "a", "x-b": "a"}, NOW) == {"f": ("a", "c")}


def test_default_applies_only_when_no_rule_gives_a_value() -> None:
    auto = one_field(default="none", rules=THREE_RULES)
    assert auto.resolve({}, NOW) == {"f": ("none",)}
    assert auto.resolve({"x-c": "c"}, NOW) == {"f": ("c",)}
    assert one_field(rules=THREE_RULES).resolve({}, NOW) == {}


@pytest.mark.parametrize(
    ("field_type", "raw", "expected"),
    [
        ("string", "3", "3"),
        ("integer", "3", 3),
        ("integer", " 3 ", 3),
        ("integer", "3.0", 3),
        ("long", "12345678901234567", 12345678901234567),
        ("float", "2.5", 2.5),
        ("float", "3", 3.0),
    ],
)
def test_values_are_cast_to_the_field_type(field_type: str, raw: str, expected: Any) -> None:
    resolved = one_field(field_type, rules=[header_rule()]).resolve({"x-v": raw}, NOW)
    assert resolved == {"f": (expected,)}
    assert type(resolved["f"][0]) is type(expected)


@pytest.mark.parametrize(
    ("field_type", "map_to", "expected"),
    [("integer", 3.0, 3), ("long", 7, 7), ("float", 1, 1.0), ("string", 2, "2")],
)
def test_numeric_map_to_is_cast(field_type: str, map_to: Any, expected: Any) -> None:
    auto = one_field(field_type, rules=[header_rule("x-v", ("equals", "y", map_to))])
    assert auto.resolve({"x-v": "y"}, NOW) == {"f": (expected,)}


@pytest.mark.parametrize(
    ("field_type", "raw"),
    [("integer", "3.5"), ("integer", "three"), ("long", ""), ("float", "inf"), ("float", "x")],
)
def test_uncastable_values_are_skipped(field_type: str, raw: str) -> None:
    # GIVEN an uncastable first rule, a castable second one and a default
    auto = one_field(field_type, default=9, rules=[header_rule("x-a"), header_rule("x-b")])
    # THEN the uncastable value is skipped and evaluation goes on
    assert auto.resolve({"x-a": raw, "x-b": "4"}, NOW) == {"f": (4,)}
    assert auto.resolve({"x-a": raw}, NOW) == {"f": (9,)}


def test_uncastable_default_leaves_the_field_absent() -> None:
    assert one_field("integer", default="lots", rules=[]).resolve({}, NOW) == {}


# --- output forms -------------------------------------------------------------------------------

OUTPUTS = AutoContext.from_config(
    {
        "devices": {"type": "string", "evaluateAll": True, "rules": THREE_RULES},
        "sizes": {
            "type": "integer",
            "evaluateAll": True,
            "rules": [header_rule("x-n"), header_rule("x-m")],
        },
        "absent": {"type": "string", "rules": [header_rule("x-none")]},
    }
)
OUTPUT_HEADERS = {"x-a": "Phone", "x-b": "Tablet", "x-n": "2", "x-m": "5"}


def test_event_values_join_strings_with_a_bar_and_take_the_first_number() -> None:
    assert OUTPUTS.for_event(OUTPUT_HEADERS, NOW) == {"devices": "Phone|Tablet", "sizes": 2}


def test_context_values_are_strings_joined_with_commas() -> None:
    assert OUTPUTS.for_context(OUTPUT_HEADERS, NOW) == {"devices": "Phone,Tablet", "sizes": "2,5"}


def test_filter_values_quote_strings_and_leave_numbers_plain() -> None:
    assert OUTPUTS.for_filter_values(OUTPUT_HEADERS, NOW) == {
        "devices": '"Phone","Tablet"',
        "sizes": "2,5",
    }


def test_filter_values_leave_out_strings_that_cannot_be_quoted() -> None:
    # A double quote in a header must not smuggle extra values into the filter expression.
    headers = {"x-a": 'Phone","TV', "x-b": "Tablet"}
    assert OUTPUTS.for_filter_values(headers, NOW) == {"devices": '"Tablet"'}
    assert OUTPUTS.for_filter_values({"x-a": '"'}, NOW) == {}


# --- the sample's config_auto_context.json ------------------------------------------------------

SAMPLE = AutoContext.from_config(SAMPLE_AUTO_CONTEXT)


def test_sample_desktop_viewer_in_seattle() -> None:
    # GIVEN a desktop viewer in Seattle at 23:30 UTC, i.e. 16:30 local (PDT)
    # WHEN auto-context is evaluated for an event and for inference
    event = SAMPLE.for_event(cloudfront_headers(), NOW)
    context = SAMPLE.for_context(cloudfront_headers(), NOW)
    # THEN the device, local time of day and city are filled in
    assert event == {"deviceType": "Desktop", "timeOfDay": "Afternoon", "city": "Seattle"}
    assert context == event


def test_sample_device_type_collects_every_true_viewer_header() -> None:
    headers = cloudfront_headers(
        **{"CloudFront-Is-Desktop-Viewer": "false", "CloudFront-Is-Mobile-Viewer": "true"},
        **{"CloudFront-Is-Tablet-Viewer": "true"},
    )
    assert SAMPLE.for_event(headers, NOW)["deviceType"] == "Phone|Tablet"
    assert SAMPLE.for_context(headers, NOW)["deviceType"] == "Phone,Tablet"


def test_sample_device_type_defaults_to_desktop() -> None:
    headers = {"cloudfront-is-desktop-viewer": "false", "cloudfront-is-mobile-viewer": "false"}
    assert SAMPLE.resolve(headers, NOW)["deviceType"] == ("Desktop",)
    assert SAMPLE.resolve({}, NOW)["deviceType"] == ("Desktop",)


@pytest.mark.parametrize(
    ("hour", "time_of_day"),
    [
        (0, "Night"),
        (3, "Night"),
        (4, "Morning"),
        (10, "Morning"),
        (11, "Afternoon"),
        (17, "Afternoon"),
        (18, "Evening"),
        (21, "Evening"),
        (22, "Night"),
        (23, "Night"),
    ],
)
def test_sample_time_of_day(hour: int, time_of_day: str) -> None:
    now = datetime(2026, 1, 15, hour, 5, tzinfo=UTC)
    headers = {"cloudfront-viewer-time-zone": "Etc/UTC"}
    assert SAMPLE.resolve(headers, now)["timeOfDay"] == (time_of_day,)


def test_sample_city_is_absent_without_the_header() -> None:
    headers = cloudfront_headers()
    del headers["CloudFront-Viewer-City"]
    assert "city" not in SAMPLE.for_event(headers, NOW)


def test_sample_dynamic_filter_value_for_metro_code() -> None:
    filters = AutoContext.from_config(SAMPLE_FILTER_VALUES)
    assert filters.for_filter_values(cloudfront_headers(), NOW) == {"METRO_CODE": '"819"'}
    assert filters.for_filter_values({}, NOW) == {}


# --- property -----------------------------------------------------------------------------------

EVERYTHING = AutoContext.from_config(
    {
        f"{field_type}-{index}": {
            "type": field_type,
            "evaluateAll": index % 2 == 0,
            **({"default": "1"} if index == 0 else {}),
            "rules": [
                header_rule("x-v"),
                header_rule("cloudfront-viewer-latitude", ("less-than", 0, "south")),
                header_rule("x-v", *[(op, "1", op) for op in ("contains", "start-with")]),
                header_rule("x-v", ("ends-with", "0", 10), ("greater-than", 5, 6.5)),
                header_rule("x-v", ("equals", "a", "b")),
                {"type": "hour-of-day"},
                {
                    "type": "day-of-week",
                    "valueMappings": [{"operator": "equals", "value": 6, "mapTo": 7}],
                },
                {"type": "season-of-year"},
            ][index:],
        }
        for field_type in ("string", "integer", "long", "float")
        for index in range(3)
    }
)
HEADER_NAMES = st.sampled_from(
    ["x-v", "X-V", "cloudfront-viewer-time-zone", "cloudfront-viewer-latitude", "other"]
)
ZONES = st.sampled_from(["Asia/Tokyo", "America/New_York", "Pacific/Kiritimati", "Nope/Zone"])


@given(
    headers=st.dictionaries(
        st.one_of(HEADER_NAMES, st.text()), st.one_of(st.text(max_size=300), ZONES)
    ),
    now=st.datetimes(timezones=st.just(UTC)),
)
def test_any_headers_and_time_give_only_allowed_types(
    headers: dict[str, str], now: datetime
) -> None:
    resolved = EVERYTHING.resolve(headers, now)
    for field in EVERYTHING.fields:
        allowed = {"string": str, "integer": int, "long": int, "float": float}[field.type]
        for value in resolved.get(field.name, ()):
            assert type(value) is allowed
            if isinstance(value, str):
                assert len(value) <= 256
    assert all(type(v) in (str, int, float) for v in EVERYTHING.for_event(headers, now).values())
    assert all(type(v) is str for v in EVERYTHING.for_context(headers, now).values())
    assert all(type(v) is str for v in EVERYTHING.for_filter_values(headers, now).values())


MEMO_CONFIG: dict[str, Any] = {
    **SAMPLE_AUTO_CONTEXT,
    "weekday": {"type": "integer", "rules": [{"type": "day-of-week"}]},
    "season": {"type": "integer", "rules": [{"type": "season-of-year"}]},
}
header_values = st.sampled_from([None, "true", "false", "x" * 300, "x" * 256 + "y"])


@given(
    requests=st.lists(
        st.tuples(
            st.fixed_dictionaries(
                {
                    "CloudFront-Is-Mobile-Viewer": header_values,
                    "cloudfront-is-desktop-viewer": header_values,
                    "cloudfront-viewer-time-zone": st.sampled_from(
                        [None, "Asia/Kathmandu", "Australia/Lord_Howe", "America/St_Johns", "Nope"]
                    ),
                    "cloudfront-viewer-latitude": st.sampled_from([None, "-33.9", "51.5"]),
                    "x-other": st.text(max_size=3),
                }
            ),
            st.datetimes(
                min_value=datetime(2020, 1, 1),
                max_value=datetime(2030, 1, 1),
                timezones=st.just(UTC),
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_remembered_results_equal_fresh_ones(requests: list[tuple[dict, datetime]]) -> None:
    """One instance asked many times (its memo at work) answers as a new instance would,
    for every output, across header values, zones with 30 and 45 minute offsets and times."""
    remembering = AutoContext.from_config(MEMO_CONFIG)
    for raw_headers, now in requests + requests:
        headers = {k: v for k, v in raw_headers.items() if v is not None}
        fresh = AutoContext.from_config(MEMO_CONFIG)
        for method in ("for_event", "for_context", "for_filter_values", "resolve"):
            assert getattr(remembering, method)(headers, now) == getattr(fresh, method)(
                headers, now
            ), (method, headers, now)


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import schemas.autocontext as module

    monkeypatch.setattr(module, "MEMO_SIZE", 3)
    auto = AutoContext.from_config(SAMPLE_AUTO_CONTEXT)
    for index in range(10):
        auto.for_event({"cloudfront-is-mobile-viewer": str(index)}, NOW)
    assert 1 <= len(auto._memo) <= 3
