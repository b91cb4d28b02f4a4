"""Direct routes answer exactly as the Starlette route would: the same app with and without the
shortcut gets the same requests, and every answer, header and counted metric must match."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from p13n.app import create_app
from p13n.metrics import Metrics
from schemas.sources import BuiltinSource, ConfigHolder
from web.fastpath import DirectRoutes

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

JSON = {"content-type": "application/json"}
GOOD = b'{"sessionId":"s-1","userId":"u-1","eventList":[{"eventType":"View","itemId":"i-1"}]}'
RECORD_ID = re.compile(rb'"recordId":"[0-9a-f]{32}"')


def client(data_dir: Path, direct: bool, metrics: Metrics) -> TestClient:
    holder = ConfigHolder(BuiltinSource(), adjust=lambda c: c.with_data_dir(str(data_dir)))
    app = create_app(holder, metrics=metrics)
    if not direct:
        app.direct = DirectRoutes([])
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, Metrics, Metrics]]:
    metrics = Metrics(), Metrics()
    with ExitStack() as stack:
        direct = stack.enter_context(client(tmp_path / "direct", True, metrics[0]))
        routed = stack.enter_context(client(tmp_path / "routed", False, metrics[1]))
        yield direct, routed, *metrics


REQUESTS = [
    ("POST", "/events/demo", GOOD, JSON),
    ("POST", "/events/demo", GOOD, {"content-type": "application/json; charset=utf-8"}),
    ("POST", "/events/nope", GOOD, JSON),
    ("POST", "/events/demo", GOOD, {"content-type": "text/plain"}),
    ("POST", "/events/demo", GOOD, {}),
    ("POST", "/events/demo", GOOD, {"content-type": "application/xml"}),
    ("POST", "/events/demo", b'{"sessionId":', JSON),
    ("POST", "/events/demo", b'{"sessionId":"s","eventList":[{}]}', JSON),
    ("POST", "/events/demo", b"{}", JSON),
    ("POST", "/events/demo", b"x" * (300 * 1024), JSON),
    ("POST", "/events/demo/", GOOD, JSON),  # not a match: the router redirects
    ("GET", "/events/demo", b"", {}),  # not a match: the router answers 405
    ("PUT", "/events/demo", GOOD, JSON),
]


@pytest.mark.parametrize("method, path, body, headers", REQUESTS)
def test_direct_answers_equal_routed_answers(pair, method, path, body, headers):
    direct, routed, direct_metrics, routed_metrics = pair
    answers = [
        c.request(method, path, content=body, headers=headers, follow_redirects=False)
        for c in (direct, routed)
    ]
    first, second = answers
    assert first.status_code == second.status_code
    assert first.headers.multi_items() == second.headers.multi_items()
    assert RECORD_ID.sub(b"", first.content) == RECORD_ID.sub(b"", second.content)
    counted = [
        [
            line
            for line in m.exposition().decode().splitlines()
            if line.startswith(("p13n_http_requests_total", "p13n_http_rejections_total"))
        ]
        for m in (direct_metrics, routed_metrics)
    ]
    assert counted[0] == counted[1]  # the same route label, status and error code
    assert counted[0]


def test_an_unexpected_error_in_a_direct_route_is_a_json_500_counted_by_route(tmp_path):
    """Front is outside Starlette's server-error middleware: it answers a direct route's
    crash the same way (the application's 500 body, nothing of the inside), and raises it on
    for the server to log."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from p13n.logs import AccessLog
    from web.errors import HANDLERS
    from web.middleware import Front

    async def crash(scope, receive, send):
        raise RuntimeError("secret internal detail")

    route = Route("/boom/{name}", crash, methods=["GET"])
    metrics = Metrics()
    holder = ConfigHolder(BuiltinSource(), adjust=lambda c: c.with_data_dir(str(tmp_path)))
    app = Front(
        Starlette(exception_handlers=HANDLERS),  # type: ignore[arg-type]
        metrics=metrics,
        config=holder,
        access_log=AccessLog(enabled=False),
        routes=[(route, crash)],
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        answer = test_client.get("/boom/x")
    assert answer.status_code == 500
    assert answer.json() == {
        "type": "Unhandled",
        "code": "InternalError",
        "message": "An internal error occurred",
    }
    assert b"secret" not in answer.content
    exposition = metrics.exposition().decode()
    assert 'p13n_http_requests_total{method="GET",route="/boom/{name}",status="500"} 1.0' in (
        exposition
    )
