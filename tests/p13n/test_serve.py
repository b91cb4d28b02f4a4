"""``p13n serve`` and ``p13n config validate`` as an operator meets them: shutdown, health,
metrics, config reloads (file and AppConfig agent), bad configs, several workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.service import P13N, Service, free_port, wait_until

JSON = {"content-type": "application/json"}
EVENTS_ROUTE = "/events/{namespace}"


def shop_config(version: str, *namespaces: str) -> dict[str, Any]:
    return {
        "version": version,
        "namespaces": {
            name: {"eventTargets": [{"type": "interactions", "name": "interactions"}]}
            for name in namespaces
        },
    }


def post_event(client: httpx.Client, namespace: str, session: str = "s") -> httpx.Response:
    return client.post(
        f"/events/{namespace}",
        json={"sessionId": session, "eventList": [{"eventType": "View", "itemId": "i"}]},
    )


def write_atomically(path: Path, document: Any) -> None:
    """Replace the file in one step, so the watcher never reads half a document."""
    text = document if isinstance(document, str) else json.dumps(document)
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text)
    os.replace(scratch, path)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample_name, sample_labels, value in samples(text)
        if sample_name == name and labels.items() <= sample_labels.items()
    )


# -- shutdown ---------------------------------------------------------------------------------


def test_sigterm_drains_and_every_accepted_event_is_in_the_stream(service_factory: Any) -> None:
    service = service_factory()
    accepted: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stopping = threading.Event()

    def client(number: int) -> None:
        with service.client() as http:
            for index in range(10_000):
                try:
                    response = post_event(http, "demo", f"session-{number}")
                except httpx.TransportError:
                    return  # the server has closed its doors
                if response.status_code == 202:
                    with lock:
                        accepted.append(response.json()["recordId"])
                elif stopping.is_set() and response.status_code == 503:
                    assert response.json()["code"] == "StreamUnavailable"
                    return
                else:
                    with lock:
                        failures.append(f"{index}: {response.status_code} {response.text}")
                    return

    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(client, n) for n in range(24)]
        wait_until(lambda: len(accepted) >= 300, timeout=30)
        stopping.set()
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)  # with requests in flight
        code = service.process.wait(10)
        exited_after = time.monotonic() - signalled
        for future in futures:
            future.result(timeout=15)

    assert code == 0, service.log_path.read_text()[-3000:]
    assert exited_after < 5
    assert failures == []
    in_stream = {line["record"]["recordId"] for line in service.tail()}
    assert len(accepted) > 300
    assert set(accepted) <= in_stream
    logs = service.logs()
    assert any(entry["message"] == "p13n stopped: producer drained" for entry in logs)
    assert not [entry for entry in logs if entry["level"] in ("error", "critical")]


def writer_processes(service: Service) -> list[int]:
    """The pids of the embedded log's writer processes the service started."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == service.process.pid and b"streams.embedded_process" in command:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # ended, not yet reaped by whoever adopted it


def test_the_writer_process_ends_with_the_service_even_when_it_is_killed(
    service_factory: Any,
) -> None:
    service = service_factory()
    with service.client() as http:
        accepted = [post_event(http, "demo", f"session-{n}").json()["recordId"] for n in range(20)]
    (writer,) = writer_processes(service)
    service.process.kill()  # SIGKILL: no drain, no close; the writer's input just ends
    service.process.wait(10)
    wait_until(lambda: gone(writer), timeout=10, what="the writer process to end")
    # Everything answered 202 is in the log, for the next run to read.
    in_stream = {line["record"]["recordId"] for line in service.tail()}
    assert set(accepted) <= in_stream


# -- health and metrics -----------------------------------------------------------------------


def test_health_readiness_and_metrics(service_factory: Any) -> None:
    service = service_factory()
    with service.client() as http:
        health = http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = http.get("/readyz")
        # Issue 13: /readyz also reports the consumer groups this process runs.
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        assert set(ready.json()["targets"]) == {
            "demo/interactions",
            "demo/archive",
            "demo/experiments",
        }

        before = http.get("/metrics").text
        assert metric(before, "p13n_stream_records_written_total") == 0

        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(lambda n: post_event(http, "demo", f"s{n}").status_code, range(40))
            )
        assert statuses == [202] * 40
        missing = post_event(http, "nope")
        assert missing.status_code == 404

        response = http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text

    events = {"route": EVENTS_ROUTE, "method": "POST"}
    assert metric(text, "p13n_http_requests_total", **events, status="202") == 40
    assert metric(text, "p13n_http_requests_total", **events, status="404") == 1
    assert metric(text, "p13n_http_rejections_total", code="NamespaceNotFound") == 1
    assert metric(text, "p13n_producer_batch_records_sum") == 40
    assert 1 <= metric(text, "p13n_producer_batch_records_count") <= 40
    assert metric(text, "p13n_stream_records_written_total") == 40
    assert metric(text, "p13n_stream_user_records_written_total") == 40
    assert metric(text, "p13n_stream_bytes_written_total") > 0
    assert metric(text, "p13n_http_request_duration_seconds_count", route=EVENTS_ROUTE) == 41
    assert metric(text, "p13n_producer_queue_depth") == 0
    # Requests are counted by route template, never by raw path (no label per namespace).
    assert 'route="/events/demo"' not in text and 'route="/events/nope"' not in text


# -- config reloads ---------------------------------------------------------------------------


def test_a_changed_config_file_is_applied_and_an_invalid_one_is_refused(
    service_factory: Any,
) -> None:
    service = service_factory(shop_config("1", "shop"))
    assert service.config_path is not None
    with service.client() as http:
        first = post_event(http, "shop")
        assert first.status_code == 202
        assert first.headers["x-personalization-config-version"] == "1"
        assert post_event(http, "news").status_code == 404

        write_atomically(service.config_path, shop_config("2", "shop", "news"))

        def reloaded() -> bool:
            response = post_event(http, "news")
            return (
                response.status_code == 202
                and response.headers["x-personalization-config-version"] == "2"
            )

        wait_until(reloaded, timeout=5)
        assert post_event(http, "shop").headers["x-personalization-config-version"] == "2"
        assert metric(http.get("/metrics").text, "p13n_config_reloads_total") == 1

        broken = shop_config("3", "shop", "news")
        broken["namespaces"]["news"]["eventTargets"] = [{"type": "personalize-event-tracker"}]
        write_atomically(service.config_path, broken)
        problem = "$.namespaces.news.eventTargets[0]"

        def rejected() -> list[dict[str, Any]]:
            return [
                entry
                for entry in service.logs()
                if entry["level"] == "error" and problem in entry["message"]
            ]

        [entry] = wait_until(rejected, timeout=5)
        assert entry["logger"] == "p13n.config"
        assert "keeping version 2" in entry["message"]
        assert any(problem in reason and "trackingId" in reason for reason in entry["errors"])

        after = post_event(http, "news")
        assert after.status_code == 202
        assert after.headers["x-personalization-config-version"] == "2"
        assert metric(http.get("/metrics").text, "p13n_config_reloads_total") == 1

        # Not JSON at all: refused the same way, and the service keeps serving version 2.
        write_atomically(service.config_path, '{"version": "4", "namespaces": {')
        wait_until(
            lambda: any("is not JSON" in entry["message"] for entry in service.logs()), timeout=5
        )
        assert post_event(http, "shop").headers["x-personalization-config-version"] == "2"


class AppConfigAgent:
    """The AppConfig agent's local HTTP API, serving whatever document the test sets."""

    def __init__(self, application: str, environment: str, profile: str) -> None:
        self.path = (
            f"/applications/{application}/environments/{environment}/configurations/{profile}"
        )
        self.document: dict[str, Any] = {}
        self.requests = 0
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                agent.requests += 1
                if self.path != agent.path:
                    self.send_error(404)
                    return
                body = json.dumps(agent.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AppConfigAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def appconfig_agent() -> Iterator[AppConfigAgent]:
    with AppConfigAgent("storefront", "prod", "p13n") as agent:
        yield agent


def test_config_from_the_appconfig_agent_is_followed(
    service_factory: Any, appconfig_agent: AppConfigAgent
) -> None:
    appconfig_agent.document = shop_config("ac-1", "shop")
    service: Service = service_factory(
        extra_args=("--config", "appconfig://storefront/prod/p13n"),
        env={"P13N_APPCONFIG_AGENT": appconfig_agent.url},
    )
    with service.client() as http:
        first = post_event(http, "shop")
        assert first.status_code == 202, first.text
        assert first.headers["x-personalization-config-version"] == "ac-1"
        assert post_event(http, "demo").status_code == 404  # not the built-in config

        appconfig_agent.document = shop_config("ac-2", "shop", "news")

        def picked_up() -> bool:
            response = post_event(http, "news")
            return (
                response.status_code == 202
                and response.headers["x-personalization-config-version"] == "ac-2"
            )

        wait_until(picked_up, timeout=5)
    records = service.tail()
    assert [line["record"]["namespace"] for line in records] == ["shop", "news"]


def test_an_appconfig_agent_that_refuses_or_is_not_there_is_a_config_error(
    appconfig_agent: AppConfigAgent,
) -> None:
    from schemas.errors import ConfigError
    from schemas.sources import AppConfigAgentSource

    appconfig_agent.document = shop_config("ac-1", "shop")
    found = AppConfigAgentSource("storefront", "prod", "p13n", appconfig_agent.url)
    assert json.loads(found.read())["version"] == "ac-1"
    unknown = AppConfigAgentSource("storefront", "prod", "other", appconfig_agent.url)
    with pytest.raises(ConfigError, match=r"storefront/prod/other .*HTTP 404"):
        unknown.read()
    nobody = AppConfigAgentSource("storefront", "prod", "p13n", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match="cannot read appconfig://storefront/prod/p13n"):
        nobody.read()


# -- config validation on the command line ----------------------------------------------------


def p13n(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "P13N_CONFIG"}
    return subprocess.run([P13N, *args], capture_output=True, text=True, timeout=timeout, env=env)


TWO_ERRORS = {
    "partitionKey": "deviceId",
    "namespaces": {"x": {"eventTargets": [{"type": "personalize-event-tracker"}]}},
}


def test_config_validate_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(shop_config("3", "shop", "news")))
    done = p13n("config", "validate", str(path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert "valid" in lines[0] and str(path) in lines[0]
    assert "version 3" in lines[0] and "2 namespace(s)" in lines[0]


def test_config_validate_lists_every_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(TWO_ERRORS))
    done = p13n("config", "validate", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    errors = [line.strip() for line in done.stderr.splitlines() if line.startswith("  ")]
    assert len(errors) == 2, done.stderr
    assert errors[0].startswith("$.namespaces.x.eventTargets[0]: ") and "trackingId" in errors[0]
    assert errors[1].startswith("$.partitionKey: ") and "deviceId" in errors[1]


@pytest.mark.parametrize("text", ['{"namespaces": {', "not json", ""])
def test_config_validate_refuses_what_is_not_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    done = p13n("config", "validate", str(path))
    assert done.returncode == 2
    assert "not JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_validate_a_missing_file(tmp_path: Path) -> None:
    done = p13n("config", "validate", str(tmp_path / "absent.json"))
    assert done.returncode == 2
    assert "absent.json" in done.stderr and "Traceback" not in done.stderr


def test_serve_refuses_an_invalid_config_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(TWO_ERRORS))
    started = time.monotonic()
    done = p13n(
        "serve",
        "--config",
        str(path),
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "data"),
        timeout=20,
    )
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 10
    assert "$.namespaces.x.eventTargets[0]" in done.stderr
    assert "$.partitionKey" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "stream.db").exists()  # nothing was started


# -- several workers --------------------------------------------------------------------------


def test_two_workers_both_accept_events(service_factory: Any) -> None:
    service = service_factory(extra_args=("--workers", "2"))
    total = 200

    def send(numbers: range) -> list[int]:
        # No keep-alive: a connection per request, so that both workers get to accept some.
        with service.client(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            return [post_event(http, "demo", f"session-{n}").status_code for n in numbers]

    with ThreadPoolExecutor(10) as pool:
        statuses = [
            s for part in pool.map(send, [range(n, total, 10) for n in range(10)]) for s in part
        ]
    assert statuses == [202] * total
    assert len(service.tail()) == total

    # Each worker counts its own requests and tells its pid; scraping over fresh
    # connections reaches both.
    accepted_by: dict[str, float] = {}

    def both_workers_answered() -> bool:
        text = httpx.get(f"{service.url}/metrics", headers={"connection": "close"}).text
        (worker,) = [labels["pid"] for name, labels, _ in samples(text) if name == "p13n_process"]
        accepted_by[worker] = metric(
            text, "p13n_http_requests_total", route=EVENTS_ROUTE, status="202"
        )
        return len(accepted_by) == 2

    wait_until(both_workers_answered, timeout=30, what="a scrape answered by each worker")
    assert sum(accepted_by.values()) == total
    assert all(count > 0 for count in accepted_by.values()), accepted_by
    ready = [e["pid"] for e in service.logs() if e["message"].startswith("p13n ready")]
    assert len(set(ready)) == 2, ready
