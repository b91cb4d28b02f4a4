"""Benchmark of the write path: POST /events against the running service, for both backends.

Every server and the load generator run as separate processes; Kinesis is the kinesis-local
emulator (npm, installed by the test command in tests/emulators) or, with ``--emulator moto``,
moto in server mode. In the same run it measures its references: the sample project's way (one
synchronous PutRecord of the request JSON per request, against the same emulator) and a bare
endpoint that answers 202 without work on the same server stack (p13n's protocol; and, as
``bare-uvicorn``, on uvicorn's own, the bare endpoint of earlier stops). It prints, per scenario:
events/s per round, p50/p99 acknowledgement latency, the median of the round-by-round ratios,
and for p13n the stream records and bytes per event (from /metrics).

    .venv/bin/python -m bench.ingest [--connections 50] [--requests 400] [--rounds 5]
    .venv/bin/python -m bench.ingest --scenarios bare,embedded    # the write path's goal alone
    .venv/bin/python -m bench.ingest --scenarios kinesis --connections 20   # records per event
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON = sys.executable
BIN = Path(PYTHON).parent
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


@contextmanager
def process(
    args: list[str],
    ready_url: str | None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    grace: float = 30,
) -> Iterator[int]:
    """Run ``args`` until the block ends (SIGTERM, then kill after ``grace`` seconds); its
    output is discarded. Yields its pid."""
    with tempfile.TemporaryFile(prefix="p13n-bench-") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd
        )
        try:
            if ready_url:
                try:
                    wait_for(ready_url)
                except SystemExit:
                    log.seek(0)
                    sys.stderr.write(log.read()[-3000:].decode(errors="replace"))
                    raise
            yield proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def load(url: str, connections: int, requests: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            PYTHON,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            "--connections",
            str(connections),
            "--requests",
            str(requests),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants (uvicorn's
    workers), read from /proc; 0 where /proc is missing."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended between the listing and the read
            continue
        # after the command: state, ppid, ... utime is field 14 and stime 15 of the whole line
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    family, total = {pid}, 0.0
    for _ in range(4):  # service -> workers -> their threads' processes, if any
        family |= {child for child, (parent, _) in stats.items() if parent in family}
    for member in family:
        total += stats.get(member, (0, 0.0))[1]
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for name in (
        "p13n_stream_records_written_total",
        "p13n_stream_bytes_written_total",
        "p13n_stream_user_records_written_total",
        "p13n_stream_write_calls_total",
    ):
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values


KINESIS_LOCAL_DIR = ROOT / "tests" / "emulators" / "node_modules" / "kinesis-local"


@contextmanager
def emulator(kind: str) -> Iterator[tuple[str, int]]:
    """A Kinesis emulator on a free port; yields its endpoint URL and pid."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if kind == "moto":
        args = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        with process(args, f"{endpoint}/moto-api/") as pid:
            yield endpoint, pid
        return
    if not (KINESIS_LOCAL_DIR / "main.js").is_file():
        raise SystemExit(
            f"kinesis-local is not installed in {KINESIS_LOCAL_DIR} (scripts/test installs it)"
        )
    env = {
        "KINESIS_MOCK_PLAIN_PORT": str(port),
        "KINESIS_MOCK_TLS_PORT": str(free_port()),
        "LOG_LEVEL": "WARN",
        "CREATE_STREAM_DURATION": "100ms",
    }
    # kinesis-local waits on SIGTERM for idle keep-alive clients that never leave; it keeps
    # nothing worth a longer grace.
    with process(["node", "main.js"], None, env, cwd=KINESIS_LOCAL_DIR, grace=1) as pid:
        wait_port(port)
        yield endpoint, pid


def kinesis_stream(endpoint: str, name: str, shards: int) -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    deadline = time.monotonic() + 30
    while True:  # kinesis-local answers on its port a moment before it takes requests
        try:
            client.create_stream(StreamName=name, ShardCount=shards)
            break
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    client.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )


@contextmanager
def p13n_server(config: dict | None, workers: int = 1) -> Iterator[tuple[str, int]]:
    """The service on a free port (``--no-consumers``: bench/consume measures the consumers;
    access logs stay on); yields its base URL and pid."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        args = [str(BIN / "p13n"), "serve", "--port", str(port), "--data-dir", data]
        args += ["--no-consumers", "--workers", str(workers)]
        if config is not None:
            path = Path(data) / "config.json"
            path.write_text(json.dumps(config))
            args += ["--config", str(path)]
        with process(args, f"{base}/readyz") as pid:
            yield base, pid


@contextmanager
def reference_server(kind: str, extra: list[str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    args = [PYTHON, "-m", "bench.references", kind, "--port", str(port), *extra]
    with process(args, None) as pid:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", pid


@dataclass(frozen=True)
class Server:
    base: str
    namespace: str
    pid: int


def measure(
    name: str,
    server: Server,
    connections: int,
    requests: int,
    observed: bool,
    emulator_pid: int | None,
) -> dict:
    """One round against a running server; for p13n (``observed``) also what the stream got.
    It also counts the CPU seconds the round cost the server, the emulator (when the
    scenario uses it) and the load generator."""
    base = server.base
    before = scrape(base) if observed else {}
    cpu_before = (
        cpu_seconds(server.pid),
        cpu_seconds(emulator_pid) if emulator_pid else 0.0,
        children_cpu_seconds(),
    )
    result = load(f"{base}/events/{server.namespace}", connections, requests)
    cpu_after = (
        cpu_seconds(server.pid),
        cpu_seconds(emulator_pid) if emulator_pid else 0.0,
        children_cpu_seconds(),
    )
    result["cpu"] = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    result["name"] = name
    if observed:
        after = scrape(base)
        result["stream"] = {k: after[k] - before[k] for k in after}
    return result


def summarise(rounds: list[dict]) -> dict:
    """The round with the median events/s, with the spread of all rounds and, for p13n, the
    stream figures over all rounds."""
    ordered = sorted(rounds, key=lambda r: r["rps"])
    result = dict(ordered[len(ordered) // 2])
    result["rps_all"] = [r["rps"] for r in rounds]
    statuses: dict[str, int] = {}
    for r in rounds:
        for status, count in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    result["statuses_all"] = statuses
    requests = sum(r["requests"] for r in rounds) or 1
    cpu = [sum(r["cpu"][n] for r in rounds) * 1000 / requests for n in range(3)]
    result["cpu_ms_per_event"] = {
        "server": round(cpu[0], 3),
        "emulator": round(cpu[1], 3),
        "loadgen": round(cpu[2], 3),
    }
    result.pop("cpu", None)
    if "stream" in result:
        total = {k: sum(r["stream"][k] for r in rounds) for k in result.pop("stream")}
        events = total["p13n_stream_user_records_written_total"] or 1
        result.update(
            stream_records_per_event=round(total["p13n_stream_records_written_total"] / events, 4),
            stream_bytes_per_event=round(total["p13n_stream_bytes_written_total"] / events, 1),
            events_per_write_call=round(events / (total["p13n_stream_write_calls_total"] or 1), 1),
        )
    return result


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


SCENARIOS = ("bare", "bare-uvicorn", "embedded", "kinesis", "sample")


def scenario_list(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SCENARIOS)}"
        )
    return chosen


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark POST /events.")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=400, help="per connection")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per scenario, taking turns; the median counts"
    )
    parser.add_argument(
        "--sample-requests", type=int, default=20, help="per connection, for the slow reference"
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--emulator", choices=("kinesis-local", "moto"), default="kinesis-local")
    parser.add_argument(
        "--producer",
        type=json.loads,
        action="append",
        help="JSON of stream.producer settings for p13n on Kinesis, e.g. '{\"lingerMs\": 4}'; "
        "repeat it to compare settings side by side in one run",
    )
    parser.add_argument(
        "--scenarios",
        type=scenario_list,
        default=list(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (ratios need bare and sample)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    labels = {
        "bare": "bare endpoint (202, no work)",
        "bare-uvicorn": "bare endpoint, uvicorn's own protocol",
        "embedded": "p13n embedded",
        "kinesis": f"p13n kinesis ({args.emulator})",
        "sample": "sample's way (PutRecord per request)",
    }
    with contextlib.ExitStack() as stack:
        emulator_pid, servers = start_servers(stack, args, labels)
        rounds = run_rounds(args, servers, labels, emulator_pid)
    results = [summarise(rounds[name]) for name in servers]
    add_ratios(results, rounds)
    print_results(args, results, rounds)


def start_servers(
    stack: contextlib.ExitStack, args: argparse.Namespace, labels: dict[str, str]
) -> tuple[int, dict[str, Server]]:
    """Every chosen scenario's server (and the emulator when one needs it), each running for
    the whole benchmark: the rounds take turns, so a slow spell of the machine falls on every
    scenario alike rather than on one of them. Adds the labels of extra Kinesis settings."""
    chosen = set(args.scenarios)
    moto, emulator_pid = "", 0
    if chosen & {"kinesis", "sample"}:
        moto, emulator_pid = stack.enter_context(emulator(args.emulator))
    servers: dict[str, Server] = {}
    for bare in ("bare", "bare-uvicorn"):
        if bare in chosen:
            base, pid = stack.enter_context(reference_server(bare, []))
            servers[bare] = Server(base, "bench", pid)
    if "embedded" in chosen:
        base, pid = stack.enter_context(p13n_server(None))
        servers["embedded"] = Server(base, "demo", pid)
    if "kinesis" in chosen:
        for number, settings in enumerate(args.producer or [{}]):
            key = "kinesis" if number == 0 else f"kinesis{number}"
            if settings:
                labels[key] = f"p13n kinesis ({args.emulator}) {json.dumps(settings)}"[:40]
            stream_name = f"bench-p13n-{number}"
            kinesis_stream(moto, stream_name, args.shards)
            base, pid = stack.enter_context(
                p13n_server(kinesis_config(stream_name, moto, settings))
            )
            servers[key] = Server(base, "bench", pid)
    if "sample" in chosen:
        kinesis_stream(moto, "bench-sample", args.shards)
        extra = ["--stream", "bench-sample", "--endpoint-url", moto]
        base, pid = stack.enter_context(reference_server("sample", extra))
        servers["sample"] = Server(base, "bench", pid)
    return emulator_pid, servers


def kinesis_config(stream_name: str, endpoint_url: str, producer: dict) -> dict:
    return {
        "version": "bench",
        "stream": {
            "type": "kinesis",
            "streamName": stream_name,
            "region": "us-east-1",
            "endpointUrl": endpoint_url,
            **({"producer": producer} if producer else {}),
        },
        "namespaces": {"bench": {"eventTargets": [{"type": "interactions"}]}},
    }


def run_rounds(
    args: argparse.Namespace, servers: dict[str, Server], labels: dict[str, str], emulator_pid: int
) -> dict[str, list[dict]]:
    """A warm-up, then ``args.rounds`` rounds in which every scenario takes its turn."""
    for server in servers.values():
        load(f"{server.base}/events/{server.namespace}", 4, 20)
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, server in servers.items():
            requests = args.sample_requests if name == "sample" else args.requests
            observed = name == "embedded" or name.startswith("kinesis")
            uses_emulator = name == "sample" or name.startswith("kinesis")
            rounds[name].append(
                measure(
                    labels[name],
                    server,
                    args.connections,
                    requests,
                    observed,
                    emulator_pid if uses_emulator else None,
                )
            )
    return rounds


def add_ratios(results: list[dict], rounds: dict[str, list[dict]]) -> None:
    """Each result's ratios to the references, round by round (the scenarios of one round ran
    within seconds of each other) and their median: a slow spell of the machine moves both
    sides of a ratio alike."""

    def paired(name: str, reference: str) -> float:
        if name not in rounds or reference not in rounds:
            return math.nan
        ratios = [a["rps"] / b["rps"] for a, b in zip(rounds[name], rounds[reference], strict=True)]
        return sorted(ratios)[len(ratios) // 2]

    for key, result in zip(rounds, results, strict=True):
        result["x_sample"] = round(paired(key, "sample"), 2)
        result["share_of_bare"] = round(paired(key, "bare"), 3)
        result["share_of_bare_uvicorn"] = round(paired(key, "bare-uvicorn"), 3)
        result["share_of_embedded"] = round(paired(key, "embedded"), 3)


def print_results(
    args: argparse.Namespace, results: list[dict], rounds: dict[str, list[dict]]
) -> None:
    print(
        f"\nPOST /events — {args.connections} clients, one event per request, keep-alive; "
        f"{os.cpu_count()} cores; each scenario's median round of {args.rounds}, taking turns;\n"
        "xsample, %bare and %emb: the median of the round-by-round ratios\n"
    )
    print_header(
        f"{'scenario':40} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'xsample':>8} {'%bare':>6} {'%emb':>5} {'rec/ev':>7} {'B/ev':>6} {'ev/call':>7} {'non-2xx':>8}  rounds (events/s)"
    )
    for r in results:
        non_2xx = sum(v for k, v in r["statuses_all"].items() if not k.startswith("2"))
        print(
            f"{r['name']:40} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['x_sample']:>8.1f} {100 * r['share_of_bare']:>5.0f}% "
            f"{100 * r['share_of_embedded']:>4.0f}% "
            f"{r.get('stream_records_per_event', float('nan')):>7.3f} {r.get('stream_bytes_per_event', float('nan')):>6.1f} "
            f"{r.get('events_per_write_call', float('nan')):>7.1f} {non_2xx:>8}  "
            + " ".join(f"{v:.0f}" for v in r["rps_all"])
        )
    if "bare-uvicorn" in rounds:
        print(
            "\n%bare is against the bare endpoint on p13n's protocol; against the one on uvicorn's "
            "own protocol: "
            + ", ".join(
                f"{r['name']} {100 * r['share_of_bare_uvicorn']:.0f}%"
                for r in results
                if not r["name"].startswith("bare")
            )
        )
    print(
        "\nrec/ev: stream records per event (a KPL aggregate counts once); B/ev: stream bytes per event "
        "(record data + partition key); ev/call: events per stream write call (PutRecords or commit)."
    )
    print_cpu(results, os.cpu_count() or 1)
    print_call_bound(results, args.connections)
    print(json.dumps(results))


def print_header(header: str) -> None:
    """A table's column names, underlined."""
    print(header)
    print("-" * len(header))


def print_call_bound(results: list[dict], connections: int) -> None:
    """For the scenarios on the emulator: its CPU per stream write call, and the rate that
    alone allows. A request is answered only once the call carrying it has returned, so each
    client waits at least one call; with ``connections`` clients and calls of ``t`` ms of
    emulator CPU, no producer can exceed ``connections / t`` events per second."""
    rows = [
        r
        for r in results
        if r["cpu_ms_per_event"]["emulator"] > 0 and r.get("events_per_write_call")
    ]
    if not rows:
        return
    print(
        f"\nEmulator CPU per write call, and the most {connections} clients can get when each waits "
        "at least one call\n"
    )
    print_header(
        f"{'scenario':40} {'ev/call':>7} {'emulator ms/call':>16} {'bound ev/s':>10} {'measured/bound':>14}"
    )
    for r in rows:
        per_call = r["cpu_ms_per_event"]["emulator"] * r["events_per_write_call"]
        bound = connections * 1000 / per_call
        r["one_call_bound_events_per_s"] = round(bound, 1)
        print(
            f"{r['name']:40} {r['events_per_write_call']:>7.1f} {per_call:>16.2f} {bound:>10.0f} "
            f"{100 * r['rps'] / bound:>13.0f}%"
        )


def print_cpu(results: list[dict], cores: int) -> None:
    """CPU milliseconds per event of each process, and the rate the machine's cores could
    carry at that cost: when a scenario is CPU-bound, this ceiling is what it can reach."""
    print(
        f"\nCPU ms per event (over all rounds) and the ceiling that cost allows on {cores} cores "
        "(cores / total CPU per event)\n"
    )
    print_header(
        f"{'scenario':40} {'server':>7} {'emulator':>8} {'loadgen':>7} {'total':>7} {'ceiling ev/s':>12} {'measured/ceiling':>16}"
    )
    for r in results:
        cpu = r["cpu_ms_per_event"]
        total = cpu["server"] + cpu["emulator"] + cpu["loadgen"]
        ceiling = cores * 1000 / total if total else math.nan
        r["cpu_ceiling_events_per_s"] = round(ceiling, 1)
        print(
            f"{r['name']:40} {cpu['server']:>7.3f} {cpu['emulator']:>8.3f} {cpu['loadgen']:>7.3f} "
            f"{total:>7.3f} {ceiling:>12.0f} {100 * r['rps'] / ceiling:>15.0f}%"
        )


if __name__ == "__main__":
    main()
