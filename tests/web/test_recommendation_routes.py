"""The recommendation routes' query-string parsing: last value wins, blank values kept, and the
memory of parsed strings stays bounded."""

from __future__ import annotations

import pytest

import web.recommendations as routes


def endpoint() -> routes._Endpoint:
    return routes._Endpoint("recommend-items", service=None, config=None)  # type: ignore[arg-type]


def test_parsing_keeps_blank_values_and_the_last_of_repeats() -> None:
    params = endpoint()._params(b"numResults=5&filter=&numResults=7&context=%7B%7D")
    assert dict(params) == {"numResults": "7", "filter": "", "context": "{}"}


def test_a_repeated_query_string_is_parsed_once_and_read_only() -> None:
    route = endpoint()
    first = route._params(b"numResults=25")
    assert route._params(b"numResults=25") is first
    with pytest.raises(TypeError):
        first["numResults"] = "1"  # type: ignore[index]


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "QUERY_MEMO_SIZE", 4)
    route = endpoint()
    for n in range(10):
        assert route._params(f"userId=u{n}".encode()) == {"userId": f"u{n}"}
    assert 1 <= len(route._queries) <= 4
