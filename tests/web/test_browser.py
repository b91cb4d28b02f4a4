"""A page on another origin, in headless Chromium, using the real service: events sent with
``fetch`` (a preflighted CORS request: JSON and an ``x-api-key``) and with
``navigator.sendBeacon`` (``text/plain``, no preflight), recommendations and the OpenAPI
document read (gzipped, since Chromium accepts gzip) — and the events found in the stream."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.chromium import dump_dom
from tests.fixtures.service import Service, wait_until

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>shop</title></head>
<body><pre id="result">pending</pre>
<script>
const api = "{api}";
(async () => {{
  const out = {{}};
  try {{
    out.beacon = navigator.sendBeacon(api + "/events/demo", JSON.stringify({{
      sessionId: "beacon-session", eventList: [{{eventType: "View", itemId: "item-2"}}]
    }}));
    const posted = await fetch(api + "/events/demo", {{
      method: "POST",
      headers: {{"content-type": "application/json", "x-api-key": "page-key"}},
      body: JSON.stringify({{
        sessionId: "fetch-session", userId: "u1",
        eventList: [{{eventType: "View", itemId: "item-1"}}]
      }})
    }});
    out.post = {{
      status: posted.status, body: await posted.json(),
      version: posted.headers.get("x-personalization-config-version")
    }};
    const recs = await fetch(api + "/recommend-items/demo/for-you/u1?numResults=5", {{
      headers: {{"x-api-key": "page-key"}}
    }});
    out.recs = {{status: recs.status, body: await recs.json()}};
    const spec = await fetch(api + "/openapi.json");
    out.spec = {{status: spec.status, openapi: (await spec.json()).openapi}};
  }} catch (error) {{
    out.error = String(error);
  }}
  document.getElementById("result").textContent = JSON.stringify(out);
}})();
</script></body></html>
"""


class PageServer:
    """Serves the page at ``/`` from its own port: another origin than the service's."""

    def __init__(self, page: str) -> None:
        body = page.encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def page_for() -> Iterator[Callable[[str], PageServer]]:
    servers: list[PageServer] = []

    def start(api: str) -> PageServer:
        server = PageServer(PAGE.format(api=api))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def access_lines(service: Service) -> list[str]:
    return [str(line.get("message", "")) for line in service.logs()]


def test_a_page_on_another_origin_sends_events_and_reads_recommendations(
    service_factory: Callable[..., Service],
    page_for: Callable[[str], PageServer],
    tmp_path: Path,
) -> None:
    service = service_factory()
    page = page_for(service.url)
    assert page.url.split("/")[2] != service.url.split("/")[2]  # another origin

    dom = dump_dom(page.url, tmp_path / "chromium-profile")
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert found is not None, dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert "error" not in result, result
    assert result["beacon"] is True  # queued by the browser
    assert result["post"]["status"] == 202 and result["post"]["body"]["accepted"] == 1
    assert result["post"]["version"] == "builtin-1"  # an exposed header, readable by the page
    assert result["recs"]["status"] == 200
    assert isinstance(result["recs"]["body"]["itemList"], list)
    assert result["spec"] == {"status": 200, "openapi": result["spec"]["openapi"]}
    assert result["spec"]["openapi"].startswith("3.")

    # Both events landed in the stream: the fetch's and the beacon's (text/plain).
    def landed() -> dict[str, Any] | None:
        sessions = {line["record"]["sessionId"]: line["record"] for line in service.tail()}
        if {"fetch-session", "beacon-session"} <= set(sessions):
            return sessions
        return None

    sessions = wait_until(landed, timeout=20, what="both events in the stream")
    assert [e["itemId"] for e in sessions["fetch-session"]["eventList"]] == ["item-1"]
    assert [e["itemId"] for e in sessions["beacon-session"]["eventList"]] == ["item-2"]
    # The fetch was preflighted, and the preflight answered without a key.
    lines = wait_until(
        lambda: [m for m in access_lines(service) if m.startswith("OPTIONS /events/demo")],
        timeout=10,
        what="the preflight in the access log",
    )
    assert lines == ["OPTIONS /events/demo 204"]
    posts = wait_until(
        lambda: (
            found
            if len(found := [m for m in access_lines(service) if m.startswith("POST /events/demo")])
            >= 2
            else None
        ),
        timeout=10,
        what="both posts in the access log",
    )
    assert sorted(posts) == ["POST /events/demo 202", "POST /events/demo 202"]
