"""The HTTP stack (``web.stack``): an unexpected error anywhere below the layers is the JSON 500,
observed by route and stamped like any answer; the layers' headers come in their fixed order."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Route

from p13n.logs import AccessLog
from p13n.metrics import Metrics
from schemas.config import default_document
from schemas.sources import ConfigHolder
from web import stack

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

ORIGIN = "https://shop.example"


class _Source:
    name = "test-stack"

    def __init__(self, document: dict[str, Any]) -> None:
        self._raw = json.dumps(document).encode()

    def read(self) -> bytes:
        return self._raw


def holder(tmp_path: Path) -> ConfigHolder:
    document = default_document()
    document["cors"] = {"allowOrigins": [ORIGIN], "exposeHeaders": ["ETag"]}
    document["compression"] = {"minimumBytes": 16}
    return ConfigHolder(_Source(document), adjust=lambda c: c.with_data_dir(str(tmp_path)))


class Crash:
    """A plain ASGI endpoint (an instance: Starlette wraps functions in Request/Response)."""

    async def __call__(self, scope, receive, send):
        raise RuntimeError("secret internal detail")


class Text:
    async def __call__(self, scope, receive, send):
        await _text(send)


async def _text(send):
    body = b'{"words": "' + b"many " * 20 + b'"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def client(tmp_path: Path, metrics: Metrics) -> TestClient:
    config = holder(tmp_path)
    routes = [Route("/boom/{name}", Crash(), methods=["GET"]), Route("/text", Text())]
    layers = stack.middleware(config, metrics, AccessLog(enabled=False))
    return TestClient(stack.build(routes, layers), raise_server_exceptions=False)


def test_an_unexpected_error_is_a_json_500_counted_by_route_with_the_layers_headers(tmp_path):
    metrics = Metrics()
    with client(tmp_path, metrics) as test_client:
        answer = test_client.get("/boom/x", headers={"origin": ORIGIN})
    assert answer.status_code == 500
    assert answer.json() == {
        "type": "Unhandled",
        "code": "InternalError",
        "message": "An internal error occurred",
    }
    assert b"secret" not in answer.content
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert answer.headers["x-personalization-config-version"] == "builtin-1"
    exposition = metrics.exposition().decode()
    assert 'p13n_http_requests_total{method="GET",route="/boom/{name}",status="500"} 1.0' in (
        exposition
    )


def test_headers_come_in_order_endpoint_version_cors_gzip(tmp_path):
    with client(tmp_path, Metrics()) as test_client:
        answer = test_client.get("/text", headers={"origin": ORIGIN, "accept-encoding": "gzip"})
    assert answer.status_code == 200
    names = [name for name, _ in answer.headers.multi_items()]
    assert names == [
        "content-type",
        "content-length",
        "x-personalization-config-version",
        "access-control-allow-origin",
        "vary",
        "access-control-expose-headers",
        "content-encoding",
        "vary",
    ]
    assert answer.headers.get_list("vary") == ["Origin", "Accept-Encoding"]
    assert answer.json() == {"words": "many " * 20}  # httpx undid the gzip
