"""Request parameters of the recommendation actions: every way a caller can get one wrong."""

from __future__ import annotations

import json

import pytest

from query.params import normalised, parse
from schemas.errors import InvalidRequest


def recommend(**params: str) -> object:
    return parse("recommend-items", "ns", "rec", {"userId": "u1"}, params, {})


def test_defaults() -> None:
    query = parse("recommend-items", "ns", "rec", {"userId": "u1"}, {}, {})
    assert (query.user_id, query.num_results, query.decorate, query.synthetic_user) == (
        "u1",
        25,
        True,
        False,
    )
    assert dict(query.context) == {} and dict(query.filter_values) == {}
    assert query.shape == "itemList"


@pytest.mark.parametrize("value", ["0", "-1", "ten", "2.5", ""])
def test_num_results_out_of_range_or_not_an_integer(value: str) -> None:
    with pytest.raises(InvalidRequest, match="numResults") as caught:
        recommend(numResults=value)
    assert caught.value.code == "InvalidNumResultsParameter"


@pytest.mark.parametrize("value", ["501", "1000", "99999999999999999999"])
def test_num_results_above_500_are_500_as_the_sample_capped_them(value: str) -> None:
    assert recommend(numResults=value).num_results == 500  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["1", "500", "42"])
def test_num_results_in_range(value: str) -> None:
    assert recommend(numResults=value).num_results == int(value)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["context", "filterValues"])
@pytest.mark.parametrize(
    "value,reason",
    [("{bad", "not valid JSON"), ("[1,2]", "JSON object"), ('{"a": {"b": 1}}', "string")],
)
def test_bad_json_maps_name_the_parameter(name: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=name) as caught:
        recommend(**{name: value})
    assert reason in caught.value.message
    # The sample project's codes.
    expected = "InvalidContextParameter" if name == "context" else "InvalidFilterParameter"
    assert caught.value.code == expected


def test_json_maps_keep_strings_and_refuse_other_values_as_the_openapi_says() -> None:
    query = recommend(context=json.dumps({"DEVICE": "Phone", "HOUR": "7"}))
    assert dict(query.context) == {"DEVICE": "Phone", "HOUR": "7"}  # type: ignore[attr-defined]
    for value in (7, 7.5, True, None, ["a"]):
        with pytest.raises(InvalidRequest, match="HOUR must be a string") as caught:
            recommend(context=json.dumps({"HOUR": value}))
        assert caught.value.code == "InvalidContextParameter"


@pytest.mark.parametrize(
    "value,expected",
    [("1", True), ("YES", True), ("True", True), ("0", False), ("no", False), ("nah", False)],
)
def test_decorate_items_words(value: str, expected: bool) -> None:
    assert recommend(decorateItems=value).decorate is expected  # type: ignore[attr-defined]


def test_ids_are_bounded() -> None:
    with pytest.raises(InvalidRequest, match="userId"):
        parse("recommend-items", "ns", "rec", {"userId": "u" * 257}, {}, {})
    with pytest.raises(InvalidRequest, match="itemId"):
        parse("related-items", "ns", "rec", {"itemId": "i" * 257}, {}, {})


def test_related_items_user_is_optional() -> None:
    query = parse("related-items", "ns", "rec", {"itemId": "i1"}, {}, {})
    assert (query.item_id, query.user_id) == ("i1", None)
    query = parse("related-items", "ns", "rec", {"itemId": "i1"}, {"userId": "u9"}, {})
    assert query.user_id == "u9"


def test_rerank_ids_from_path_and_body() -> None:
    path = {"userId": "u1", "itemIds": "a,b,a"}
    assert parse("rerank-items", "ns", "r", path, {}, {}).item_ids == ("a", "b", "a")
    body = json.dumps(["x", "y"]).encode()
    query = parse("rerank-items", "ns", "r", {"userId": "u1"}, {}, {}, body)
    assert query.item_ids == ("x", "y") and query.shape == "personalizedRanking"


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"not json", "not valid JSON"),
        (b'{"a": 1}', "JSON array"),
        (b"[]", "at least one"),
        (b'["ok", 3]', "[1]"),
        (json.dumps(["i"] * 501).encode(), "at most 500"),
    ],
)
def test_rerank_bad_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse("rerank-items", "ns", "r", {"userId": "u1"}, {}, {}, body)
    assert reason in caught.value.message


def test_empty_item_in_path_list_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"itemIds\[1\]"):
        parse("rerank-items", "ns", "r", {"userId": "u1", "itemIds": "a,,b"}, {}, {})


def test_normalised_key_ignores_order_and_unknown_parameters() -> None:
    one = normalised({"numResults": "5", "feature": "f", "utm": "x"})
    two = normalised({"feature": "f", "numResults": "5"})
    assert one == two == "numResults=5&feature=f"
