"""Operator safety, over real processes: one runner per consumer group and data folder, AWS
credentials and placeholders pause a group instead of dead-lettering, a config reload starts,
rebuilds and stops groups, and the CLI says what it uses and fails in one line."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.consumers import test_faults_e2e
from tests.consumers.test_faults_e2e import (
    NS,
    Receiver,
    dead_letters,
    embedded_config,
    metric,
    post,
)
from tests.fixtures.fake_personalize import FakePersonalize
from tests.fixtures.service import P13N, Service, wait_until

# The local HTTP receiver fixture of the consumer fault tests, used by name below.
receiver_factory = test_faults_e2e.receiver_factory


def readiness(service: Service) -> dict[str, Any]:
    answer = httpx.get(f"{service.url}/readyz", timeout=5)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def group_state(service: Service, group: str) -> str:
    return str(readiness(service)["targets"].get(group, {}).get("state"))


def post_many(service: Service, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    with service.client() as http:
        for n, event_id in enumerate(ids):
            post(http, f"{prefix}-s{n % 4}", event_id)
    return ids


def rewrite(path: Path, document: dict[str, Any]) -> None:
    """Replace the config file whole (write beside it, rename), as an editor or deploy would."""
    staged = path.with_suffix(".staged")
    staged.write_text(json.dumps(document))
    os.replace(staged, path)


def log_messages(service: Service) -> list[str]:
    return [str(line.get("message", "")) for line in service.logs()]


# -- 1. one runner per group and data folder ---------------------------------------------------


def test_a_second_runner_on_the_same_data_folder_stands_by_or_refuses(
    service_factory: Callable[..., Service], receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory()
    config = embedded_config({"type": "http", "name": "hook", "url": receiver.url})
    group = f"{NS}/hook"
    first = service_factory(config)
    wait_until(lambda: group_state(first, group) == "running", timeout=10)
    # Another serve on another port, same data folder: its groups wait for the first's.
    second = service_factory(config, extra_args=("--data-dir", str(first.data_dir)))
    wait_until(lambda: group_state(second, group) == "standby", timeout=10)
    assert "runs in another process" in readiness(second)["targets"][group]["reason"]

    # `p13n consume` refuses, in one line, naming the holder; exit 1.
    refused = first.cli("consume", timeout=30)
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("p13n: config ")  # which config and data folder it used
    assert len(lines) == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"consumer group {group} already runs on {first.data_dir}" in lines[1]
    assert f"pid {first.process.pid}" in lines[1]

    # A serve that loses the port race exits 3 before it starts any consumer.
    port = first.url.rsplit(":", 1)[1]
    loser = subprocess.run(
        [P13N, "serve", "--port", port, "--data-dir", str(first.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env=first.env,
    )
    assert loser.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in loser.stderr
    assert "consumers started" not in loser.stderr
    assert "Traceback" not in loser.stderr

    # Events written through both services are delivered once each, by the first.
    ids = post_many(first, "a", 10) + post_many(second, "b", 10)
    wait_until(lambda: set(ids) <= set(receiver.ids()), timeout=20)
    assert group_state(second, group) == "standby"
    # The standby takes over when the first stops, from the first's checkpoint.
    assert first.stop() == 0
    wait_until(lambda: group_state(second, group) == "running", timeout=10)
    ids += post_many(second, "c", 10)
    wait_until(lambda: set(ids) <= set(receiver.ids()), timeout=20)
    counts = Counter(receiver.ids())
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}, {i: n for i, n in counts.items() if n > 1}


def test_consume_with_wait_stands_by_until_serve_stops(
    service_factory: Callable[..., Service],
    receiver_factory: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    receiver = receiver_factory()
    service = service_factory(
        embedded_config({"type": "http", "name": "hook", "url": receiver.url})
    )
    assert service.config_path is not None
    log_path = tmp_path / "consume.log"
    args = [P13N, "consume", "--wait", "--config", str(service.config_path)]
    args += ["--data-dir", str(service.data_dir)]
    with open(log_path, "wb") as log:
        consume = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=service.env)
    try:
        wait_until(lambda: "waiting for it to stop" in log_path.read_text(), timeout=20)
        ids = post_many(service, "w", 10)
        wait_until(lambda: set(ids) <= set(receiver.ids()), timeout=20)
        assert service.stop() == 0
        wait_until(lambda: "taking over" in log_path.read_text(), timeout=20)
    finally:
        consume.terminate()
        assert consume.wait(30) == 0
    assert Counter(receiver.ids()) == Counter(ids)


# -- 2. credentials and placeholders: pause, never dead-letter ---------------------------------


def test_a_target_without_credentials_pauses_then_delivers_everything_once_given_them(
    service_factory: Callable[..., Service], fake_personalize: FakePersonalize, tmp_path: Path
) -> None:
    fake = fake_personalize
    credentials = tmp_path / "aws-credentials"  # does not exist yet
    group = f"{NS}/personalize"
    service = service_factory(
        embedded_config(
            {
                "type": "personalize-event-tracker",
                "name": "personalize",
                "trackingId": fake.tracking_id,
                "endpointUrl": fake.endpoint,
                "region": "us-east-1",
                "maxAttempts": 2,  # had it counted attempts, two would dead-letter
            }
        ),
        env={
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        unset=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    )
    ids = post_many(service, "n", 12)
    wait_until(lambda: group_state(service, group) == "paused", timeout=15)
    ready = readiness(service)
    assert ready["status"] == "degraded"
    assert group in ready["reason"]
    assert "no AWS credentials" in ready["targets"][group]["reason"]
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    assert metric(text, "p13n_consumer_state", group=group, state="paused") == 1
    assert metric(text, "p13n_consumer_state", group=group, state="running") == 0
    assert any("paused" in m and "no AWS credentials" in m for m in log_messages(service))
    assert fake.event_ids() == []
    assert dead_letters(service) == []

    # The operator provides credentials: the group picks them up on its next try.
    credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = x\n")
    wait_until(lambda: set(ids) <= set(fake.event_ids()), timeout=45)
    wait_until(lambda: group_state(service, group) == "running", timeout=10)
    assert readiness(service)["status"] == "ready"
    assert dead_letters(service) == []


def test_a_placeholder_pauses_the_group_and_a_reload_that_fills_it_delivers_everything(
    service_factory: Callable[..., Service], fake_personalize: FakePersonalize
) -> None:
    fake = fake_personalize
    target = {
        "type": "personalize-event-tracker",
        "name": "personalize",
        "trackingId": "[TRACKING_ID]",  # as the sample project's configs ship
        "endpointUrl": fake.endpoint,
        "region": "us-east-1",
    }
    group = f"{NS}/personalize"
    config = embedded_config(target)
    arn = "arn:aws:personalize:[REGION]:[ACCOUNT]:campaign/for-you"
    config["namespaces"][NS]["recommenders"] = {
        "recommend-items": {
            "for-you": {"variations": {"v1": {"type": "personalize-campaign", "arn": arn}}}
        }
    }
    service = service_factory(config)
    assert service.config_path is not None
    # Placeholders in variations are warned about at start-up (their requests will fail).
    assert any(
        f"variation {NS}/recommend-items/for-you/v1 has a placeholder" in m and arn in m
        for m in log_messages(service)
    )
    ids = post_many(service, "p", 8)
    wait_until(lambda: group_state(service, group) == "paused", timeout=15)
    reason = readiness(service)["targets"][group]["reason"]
    assert "placeholder" in reason and "trackingId: [TRACKING_ID]" in reason
    assert dead_letters(service) == []

    rewrite(service.config_path, embedded_config({**target, "trackingId": fake.tracking_id}))
    wait_until(lambda: set(ids) <= set(fake.event_ids()), timeout=30)
    assert group_state(service, group) == "running"
    assert dead_letters(service) == []


# -- 3. reload starts, rebuilds and stops consumer groups --------------------------------------


def test_a_reload_adds_rebuilds_and_removes_consumer_groups(
    service_factory: Callable[..., Service], receiver_factory: Callable[..., Receiver]
) -> None:
    a, b = receiver_factory(), receiver_factory()
    hook_a = {"type": "http", "name": "a", "url": a.url}
    hook_b = {"type": "http", "name": "b", "url": b.url}
    service = service_factory(embedded_config(hook_a))
    assert service.config_path is not None
    first = post_many(service, "r1", 10)
    wait_until(lambda: set(first) <= set(a.ids()), timeout=20)

    # Adding a target starts its group, from the start of the stream.
    rewrite(service.config_path, embedded_config(hook_a, hook_b))
    wait_until(lambda: set(first) <= set(b.ids()), timeout=20)
    second = post_many(service, "r2", 10)
    wait_until(lambda: set(first + second) <= set(a.ids()) & set(b.ids()), timeout=20)
    assert any(f"started {NS}/b; rebuilt none; stopped none" in m for m in log_messages(service))

    # Changing b rebuilds it from its checkpoint; removing a stops it.
    rewrite(service.config_path, embedded_config({**hook_b, "batchSize": 3}))
    wait_until(
        lambda: any(f"rebuilt {NS}/b; stopped {NS}/a" in m for m in log_messages(service)),
        timeout=20,
    )
    assert set(readiness(service)["targets"]) == {f"{NS}/b"}
    third = post_many(service, "r3", 10)
    wait_until(lambda: set(third) <= set(b.ids()), timeout=20)
    assert Counter(b.ids()) == Counter(first + second + third)  # nothing twice
    assert Counter(a.ids()) == Counter(first + second)  # a got nothing after it was removed


# -- 4, 5. the CLI says which config and data folder it uses; errors are one line --------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [P13N, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if not line.startswith("p13n: config ")]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 or lines[0].startswith("usage:"), done.stderr
    return lines[-1]


def test_cli_commands_take_the_config_and_data_folder_from_the_environment(
    service_factory: Callable[..., Service], tmp_path: Path
) -> None:
    service = service_factory(
        embedded_config({"type": "http", "name": "hook", "url": "http://127.0.0.1:9/"})
    )
    assert service.config_path is not None
    env = {"P13N_CONFIG": str(service.config_path), "P13N_DATA_DIR": str(service.data_dir)}
    done = run_cli("dead-letters", "list", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (
        f"p13n: config {service.config_path} ($P13N_CONFIG), data folder {service.data_dir}"
    )
    # The running service's events are what the command sees.
    post_many(service, "e", 3)
    tail = run_cli("stream", "tail", "--from-start", env=env)
    assert tail.returncode == 0, tail.stderr
    assert len(tail.stdout.splitlines()) == 3
    # Flags win over the environment, and say so.
    other = tmp_path / "elsewhere"
    flagged = run_cli("dead-letters", "list", "--data-dir", str(other), env=env)
    assert flagged.stderr.splitlines()[0].endswith(f"data folder {other} (does not exist yet)")


def test_cli_errors_are_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    plot = one_error_line(
        run_cli("experiments", "report", "--data-dir", data, "--plot", "/nonexistent/dir/x.png")
    )
    assert plot == "p13n: --plot /nonexistent/dir/x.png: no folder /nonexistent/dir"
    source = one_error_line(
        run_cli("replay", "--source", "/nonexistent", "--target", "archive", "--data-dir", data)
    )
    assert source == "p13n: --source /nonexistent: no such file or folder"
    for limit in ("0", "-1", "x"):
        done = run_cli("stream", "tail", "--limit", limit, "--data-dir", data)
        assert done.returncode == 2
        assert "argument --limit:" in one_error_line(done)


def test_a_good_plot_says_where_it_went(tmp_path: Path) -> None:
    chart = tmp_path / "rates.png"
    done = run_cli("experiments", "report", "--data-dir", str(tmp_path / "d"), "--plot", str(chart))
    assert done.returncode == 0, done.stderr
    assert f"p13n: wrote the chart to {chart}" in done.stderr
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_help_shows_defaults() -> None:
    serve = run_cli("serve", "--help")
    assert "(default: 8000)" in serve.stdout and "(default: 127.0.0.1)" in serve.stdout
    seed = run_cli("demo", "seed", "--help")
    assert "(default: 13)" in seed.stdout and "(default: 5000)" in seed.stdout
    report = run_cli("experiments", "report", "--help")
    assert "(default: table)" in report.stdout


# -- 7. the README's demo answer is the seeded demo's -----------------------------------------


def readme_answer(marker: str) -> dict[str, Any]:
    """The example answer printed (as comments) right after the README line with ``marker``."""
    lines = (Path(__file__).parents[2] / "README.md").read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if marker in line)
    shown = []
    for line in lines[at + 1 :]:
        if not line.startswith("# "):
            break
        shown.append(line[2:])
    answer: dict[str, Any] = json.loads("".join(shown))
    return answer


def test_the_readme_answer_for_user_0001_is_the_fixed_seed_demos(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory()  # the built-in config, as the Quick start runs it
    seeded = service.cli("demo", "seed", "--url", service.url, "--events", "5000", timeout=300)
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    store = service.data_dir / "interactions.db"

    def stored() -> bool:
        if not store.exists():
            return False
        with contextlib.closing(sqlite3.connect(store)) as conn:
            return bool(conn.execute("SELECT count(*) FROM interactions").fetchone()[0] == 5000)

    wait_until(stored, timeout=60)
    path = "/recommend-items/demo/for-you/user-0001?numResults=3"
    got = httpx.get(f"{service.url}{path}", timeout=10).json()
    shown = readme_answer(f"localhost:8000{path}")
    assert [(i["itemId"], i["metadata"]) for i in got["itemList"]] == [
        (i["itemId"], i["metadata"]) for i in shown["itemList"]
    ]
    assert [i["score"] for i in got["itemList"]] == pytest.approx(
        [i["score"] for i in shown["itemList"]], rel=0.01
    )
    assert got["matchedExperiment"] == shown["matchedExperiment"]
    # "affinity": the user's own categories (they clicked toys and books most)
    assert {i["metadata"]["category"] for i in got["itemList"]} <= {"toys", "books"}
