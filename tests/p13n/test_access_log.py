"""Access log lines: the time stamp of each line is its own, to the millisecond, also when
lines share a second (the formatted second is reused) or a millisecond (the whole stamp is)
and when the second changes."""

from __future__ import annotations

import io
import json

import pytest

from p13n import logs


def test_each_line_has_its_own_utc_time(monkeypatch: pytest.MonkeyPatch) -> None:
    times = iter(
        [
            1_700_000_000.0015,
            1_700_000_000.0018,
            1_700_000_000.999,
            1_700_000_001.25,
            1_700_000_061.5,
        ]
    )
    monkeypatch.setattr(logs.time, "time", lambda: next(times))
    stream = io.StringIO()
    access = logs.AccessLog(stream=stream)
    for status in (202, 429, 400, 202, 503):
        access.write({"message": f"POST /events/demo {status}", "status": status})
    access.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["time"] for line in lines] == [
        "2023-11-14T22:13:20.001Z",
        "2023-11-14T22:13:20.001Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:21.250Z",
        "2023-11-14T22:14:21.500Z",
    ]
    assert [line["status"] for line in lines] == [202, 429, 400, 202, 503]
    assert {line["logger"] for line in lines} == {"p13n.access"}


def test_request_lines_have_every_field_and_a_code_only_when_there_is_one() -> None:
    stream = io.StringIO()
    access = logs.AccessLog(stream=stream)
    access.request("POST", "/events/demo", 202, "/events/{namespace}", 0.0123456, None)
    access.request("GET", "/nope", 404, "unmatched", 0.001, "NotFound")
    access.flush()
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert list(first) == ["time", "level", "logger", "message", "route", "status", "ms"]
    assert first["level"] == "info" and first["logger"] == "p13n.access"
    assert first["message"] == "POST /events/demo 202" and first["ms"] == 12.346
    assert second["code"] == "NotFound" and second["status"] == 404


def test_the_last_lines_of_a_burst_are_written_without_waiting_for_another_request() -> None:
    """On an event loop, buffered lines are written a quarter second after the first of them
    even when no request follows (before, only the next line's arrival could write them)."""
    import asyncio

    stream = io.StringIO()
    access = logs.AccessLog(stream=stream)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        access.request("POST", "/events/demo", 202, "/events/{namespace}", 0.001, None)
        access.request("POST", "/events/demo", 202, "/events/{namespace}", 0.001, None)
        assert stream.getvalue() == ""  # still buffered
        while not stream.getvalue():
            assert loop.time() - started < 5, "the buffered lines were never written"
            await asyncio.sleep(0.01)
        return loop.time() - started

    waited = asyncio.run(main())
    assert len(stream.getvalue().splitlines()) == 2
    assert waited >= logs.AccessLog.FLUSH_SECONDS * 0.9
