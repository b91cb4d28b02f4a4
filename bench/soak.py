"""Soak: the whole system on Kinesis emulation at a steady load, with faults on a schedule.

Processes: kinesis-local (behind a TCP proxy of ours, persisting to disk), moto_server
(DynamoDB: checkpoints and shard leases), our fake Personalize and an HTTP receiver (one child
process), the service (``p13n serve --no-consumers``) and one ``p13n consume`` running three
consumer groups: ``personalize-event-tracker``, ``http`` (the receiver) and ``archive``.

Faults: the consumer is killed with SIGKILL every ``--kill-every`` seconds and started again
at once (its leases block the new one until they expire: ``--lease-seconds``); Personalize
throttles half its calls for ``--throttle-seconds`` every ``--throttle-every`` seconds; once,
mid-run, the emulator is stopped (the proxy cuts every connection, the emulator gets SIGTERM
and writes its data to disk) and started again on that data. The load honours 503 and 429
with ``Retry-After``, so an event refused during the outage is sent again, never dropped.

At the end the load stops, every target is given time to catch up, the consumer is stopped
by SIGTERM (the archive rolls its files), and it prints: events accepted; per target the
events delivered, lost (accepted, never delivered: must be 0), duplicated (deliveries beyond
the first), sessions out of order, and lag (first delivery minus acceptance); p50/p99 ack latency;
dead letters; and the RSS of every process after warm-up and at the end (growth > 20% flagged).

    .venv/bin/python -m bench.soak [--duration 300] [--rate 200] [--kill-every 30]
                                   [--no-emulator-restart]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soak_load import Load, LoadResult
from bench.soak_parts import TcpProxy, fakes_process

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KINESIS_LOCAL = ROOT / "tests" / "emulators" / "node_modules" / "kinesis-local"
NAMESPACE = "soak"
STREAM = "soak"
TABLE = "p13n-soak-checkpoints"
TARGETS = ("personalize", "hook", "archive")
LAG_WINDOW = 15.0
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "soak",
    "AWS_SECRET_ACCESS_KEY": "soak",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
AWS_ENV_REMOVED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "P13N_CONFIG")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    what: str, condition: Callable[[], Any], timeout: float = 60.0, *, tolerate: bool = True
) -> Any:
    """Poll ``condition`` until truthy; its exceptions count as "not yet" if ``tolerate``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except Exception:
            if not tolerate:
                raise
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out waiting for {what}")
        time.sleep(0.1)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:  # the process has exited (or /proc is not there): no figure
        return None
    return None


class Child:
    """A process in a session (and so a process group) of its own, logging to a file."""

    def __init__(self, name: str, args: list[str], logs: Path, cwd: Path = ROOT, **env: str):
        self.name = name
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, **env}
        self.log_path = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole group, and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True when it exited by itself."""
        if self.process is None or self.process.poll() is not None:
            return True
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False


@dataclass
class Timeline:
    start: float = field(default_factory=time.monotonic)
    faults: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.start

    def note(self, text: str) -> None:
        line = f"{self.now():7.1f}s  {text}"
        self.faults.append(line)
        print(line, flush=True)


# -- setting up --------------------------------------------------------------------------------


def kinesis_child(logs: Path, data: Path, port: int, number: int, first: bool) -> Child:
    env = {
        "KINESIS_MOCK_PLAIN_PORT": str(port),
        "KINESIS_MOCK_TLS_PORT": str(free_port()),
        "SHOULD_PERSIST_DATA": "true",
        "LOAD_DATA_IF_EXISTS": "true",
        "PERSIST_PATH": str(data),
        # The data is written at shutdown too; the periodic copy is only a safety net (each
        # one serialises every record held, which costs CPU the system under test needs).
        "PERSIST_INTERVAL": "60s",
        "LOG_LEVEL": "WARN",
        "CREATE_STREAM_DURATION": "100ms",
    }
    if first:
        env["INITIALIZE_STREAMS"] = f"{STREAM}:4"
    return Child(f"kinesis-local-{number}", ["node", "main.js"], logs, KINESIS_LOCAL, **env)


def kinesis_ready(endpoint: str) -> Callable[[], bool]:
    import boto3

    client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")

    def ready() -> bool:
        summary = client.describe_stream_summary(StreamName=STREAM)
        return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    return ready


def make_config(
    path: Path, kinesis: str, moto: str, fakes: dict[str, str], data: Path, lease: float
) -> None:
    document = {
        "version": "soak",
        "stream": {
            "type": "kinesis",
            "streamName": STREAM,
            "region": "us-east-1",
            "endpointUrl": kinesis,
        },
        "checkpoints": {
            "type": "dynamodb",
            "tableName": TABLE,
            "endpointUrl": moto,
            "region": "us-east-1",
            "leaseSeconds": lease,
        },
        "consumer": {"pollIntervalMs": 200},
        "namespaces": {
            NAMESPACE: {
                "eventTargets": [
                    {
                        "type": "personalize-event-tracker",
                        "name": "personalize",
                        "trackingId": fakes["tracking_id"],
                        "endpointUrl": fakes["personalize"],
                        "region": "us-east-1",
                        # Throttling bursts are retried through, not dead-lettered by bad luck.
                        "maxAttempts": 30,
                    },
                    {"type": "http", "name": "hook", "url": fakes["hook"], "maxAttempts": 30},
                    {
                        "type": "archive",
                        "name": "archive",
                        "uri": f"file://{data / 'archive'}",
                        "rollSeconds": 10,
                    },
                ]
            }
        },
    }
    path.write_text(json.dumps(document, indent=1))


def create_checkpoint_table(moto: str) -> None:
    from aws.clients import client
    from streams.dynamodb_checkpoints import create_table

    create_table(client("dynamodb", endpoint_url=moto, region="us-east-1"), TABLE)


def leases_held(moto: str) -> int:
    from aws.clients import client

    items = client("dynamodb", endpoint_url=moto, region="us-east-1").scan(TableName=TABLE)
    return sum(1 for item in items["Items"] if "owner" in item)


# -- reading the outcome -----------------------------------------------------------------------


def archived_ids(folder: Path) -> tuple[list[str], int, int]:
    """Every event id in the archive's files (final files and staging segments, a record in
    both counted twice) in stream order per shard; how many are in final files (visible to
    replay); and how many copies beyond the first the stream itself holds (one event id at
    several stream positions: a write that succeeded but whose answer was lost, sent again)."""
    import fastavro

    from schemas.codec import Codec

    codec = Codec.packaged()
    found: list[tuple[str, int, int, str]] = []
    visible = 0
    for path in sorted(folder.rglob("*.avro")):
        staged = "_staging" in path.parts
        with path.open("rb") as handle:
            for entry in fastavro.reader(handle):
                record: dict[str, Any] = entry  # type: ignore[assignment]
                _, fields = codec.decode(record["data"])
                where = (record["shardId"], int(record["sequenceNumber"]), record["subSequence"])
                for event in fields.get("eventList") or ():
                    found.append((*where, event["eventId"]))
                    visible += not staged
    found.sort()
    positions: dict[str, set[tuple[str, int, int]]] = {}
    for shard, sequence, sub, event_id in found:
        positions.setdefault(event_id, set()).add((shard, sequence, sub))
    in_stream_twice = sum(len(p) - 1 for p in positions.values())
    return [event_id for *_, event_id in found], visible, in_stream_twice


def dead_letters(config: Path, data: Path) -> Counter[str]:
    done = subprocess.run(
        [
            str(BIN / "p13n"),
            "dead-letters",
            "list",
            "--config",
            str(config),
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Counter(json.loads(line)["group"] for line in done.stdout.splitlines() if line.strip())


def percentile(values: Iterable[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class TargetFigures:
    name: str
    deliveries: int
    delivered: int  # accepted ids delivered at least once
    lost: int
    duplicated: int
    unacknowledged: int  # delivered ids that never got a 202
    out_of_order_sessions: int
    lags: list[tuple[float, float]] = field(default_factory=list)  # (accepted at, lag)

    def lag_values(self) -> list[float]:
        return [lag for _, lag in self.lags]


def figures(name: str, arrivals: list[tuple[str, float | None]], load: LoadResult) -> TargetFigures:
    first: dict[str, float | None] = {}
    order: list[str] = []
    for event_id, at in arrivals:
        if event_id not in first:
            first[event_id] = at
            order.append(event_id)
    accepted = load.accepted
    position = {event_id: n for n, event_id in enumerate(order)}
    out_of_order = 0
    for ids in load.sessions.values():
        seen = [position[i] for i in ids if i in position]
        if seen != sorted(seen):
            out_of_order += 1
    lags = [
        (accepted[event_id], at - accepted[event_id])
        for event_id, at in first.items()
        if at is not None and event_id in accepted
    ]
    return TargetFigures(
        name,
        deliveries=len(arrivals),
        delivered=sum(1 for i in accepted if i in first),
        lost=sum(1 for i in accepted if i not in first),
        duplicated=len(arrivals) - len(first),
        unacknowledged=sum(1 for i in first if i not in accepted),
        out_of_order_sessions=out_of_order,
        lags=lags,
    )


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a run ended with, for the report."""

    load: LoadResult
    report: dict[str, Any]  # what the fakes received (report_from_fakes)
    archive: list[str]  # event ids in the archive, every copy
    archive_visible: int  # of those, in rolled files
    stream_copies: int  # events written to the stream more than once
    letters: Counter[str]  # dead letters by namespace/group
    end_rss: dict[str, int]
    caught_up: bool
    drain_seconds: float
    consumer_graceful: bool


def print_targets(rows: list[TargetFigures], outcome: Outcome) -> None:
    """Per target: delivered, lost, duplicated, out of order, lag, dead letters."""
    header = (
        f"{'target':14} {'delivered':>9} {'deliveries':>10} {'lost':>5} {'dup':>6} "
        f"{'unacked':>7} {'ooo sess':>8} {'lag p50':>8} {'lag p99':>8} {'lag max':>8} "
        f"{'dead':>5}"
    )
    print(header)
    print("-" * len(header))
    for row, group in zip(rows, TARGETS, strict=True):
        lags = row.lag_values()
        lag = (
            f"{percentile(lags, 0.5):>7.2f}s {percentile(lags, 0.99):>7.2f}s {max(lags):>7.2f}s"
            if lags
            else f"{'-':>8} {'-':>8} {'-':>8}"
        )
        print(
            f"{row.name:14} {row.delivered:>9} {row.deliveries:>10} {row.lost:>5} "
            f"{row.duplicated:>6} {row.unacknowledged:>7} {row.out_of_order_sessions:>8} "
            f"{lag} {outcome.letters.get(f'{NAMESPACE}/{group}', 0):>5}"
        )
    report = outcome.report
    print(
        "\nduplicates in the stream itself (by the archive's stream positions): "
        f"{outcome.stream_copies} — writes whose answer the outage cut, so the event was refused "
        f"and sent again\narchive: {outcome.archive_visible} of {len(outcome.archive)} archived "
        "events in rolled files (the rest in segments of killed writers, rolled after 300 s "
        f"idle); Personalize calls: {report['personalize_calls']}; receiver requests "
        f"{report['hook_requests']}"
    )
    for request in report["personalize_refused"]:
        print(f"  Personalize refused: {request}")


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir()
        self.data = work / "data"
        self.timeline = Timeline()
        self.children: list[Child] = []
        self.rss: dict[str, list[tuple[float, int]]] = {}
        self.proxy: TcpProxy | None = None
        self.fakes: Any = None  # the pipe to the fakes process
        self.fakes_process: Any = None
        self.kinesis: Child | None = None
        self.consumer: Child | None = None
        self.service: Child | None = None
        self.outage: tuple[float, float] | None = None
        self.emulator_stop_graceful = True
        self._lock = threading.Lock()

    def child(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        return child

    def set_up(self) -> tuple[str, Path]:
        kinesis_port, proxy_port = free_port(), free_port()
        self.kinesis = self.child(
            kinesis_child(self.logs, self.work / "kinesis-data", kinesis_port, 1, True)
        )
        moto_port = free_port()
        moto = f"http://127.0.0.1:{moto_port}"
        self.child(
            Child(
                "moto",
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                self.logs,
            )
        )
        context = multiprocessing.get_context("spawn")
        self.fakes, theirs = context.Pipe()
        self.fakes_process = context.Process(
            target=fakes_process, args=(theirs, str(self.logs / "fakes.log")), daemon=True
        )
        self.fakes_process.start()
        endpoints = self.fakes.recv()
        wait_until("kinesis-local", kinesis_ready(f"http://127.0.0.1:{kinesis_port}"))
        self.proxy = TcpProxy(proxy_port, kinesis_port)
        wait_until("moto_server", lambda: urllib.request.urlopen(f"{moto}/moto-api/", timeout=1))
        create_checkpoint_table(moto)
        config = self.work / "config.json"
        make_config(
            config,
            f"http://127.0.0.1:{proxy_port}",
            moto,
            endpoints,
            self.data,
            self.args.lease_seconds,
        )
        port = free_port()
        common = ["--config", str(config), "--data-dir", str(self.data)]
        self.service = self.child(
            Child(
                "service",
                [str(BIN / "p13n"), "serve", "--port", str(port), "--no-consumers", *common],
                self.logs,
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_until("the service", lambda: urllib.request.urlopen(f"{base}/readyz", timeout=2))
        self.consumer = self.child(
            Child("consume", [str(BIN / "p13n"), "consume", *common], self.logs)
        )
        return base, config

    def sample_rss(self) -> None:
        at = self.timeline.now()
        named: list[tuple[str, int | None]] = [
            ("bench (load, proxy)", os.getpid()),
            ("fakes (Personalize, receiver)", self.fakes_process.pid),
        ]
        named += [
            (c.name if c is not self.kinesis else "kinesis-local", c.pid)
            for c in self.children
            if c.alive()
        ]
        for name, pid in named:
            if pid is not None and (kib := rss_kib(pid)) is not None:
                self.rss.setdefault(name, []).append((at, kib))

    def restart_emulator(self) -> None:
        assert self.kinesis is not None and self.proxy is not None
        began = self.timeline.now()
        self.timeline.note("emulator: proxy cut, SIGTERM to kinesis-local")
        self.proxy.cut()
        self.emulator_stop_graceful = self.kinesis.stop(timeout=30)
        port = free_port()
        self.kinesis = self.child(
            kinesis_child(self.logs, self.work / "kinesis-data", port, 2, False)
        )
        wait_until("kinesis-local restart", kinesis_ready(f"http://127.0.0.1:{port}"), 120)
        self.proxy.reopen(port)
        self.outage = (began, self.timeline.now())
        self.timeline.note(
            f"emulator: back after {self.outage[1] - began:.1f}s "
            f"(stopped {'gracefully' if self.emulator_stop_graceful else 'by SIGKILL'})"
        )

    def schedule(self) -> list[tuple[float, str, Callable[[], None]]]:
        args = self.args
        events: list[tuple[float, str, Callable[[], None]]] = []
        if args.kill_every > 0:
            at = args.kill_every
            while at < args.duration:
                events.append((at, "kill", self.kill_consumer))
                at += args.kill_every
        at = args.throttle_every
        while at < args.duration:
            events.append((at, "throttle on", lambda: self.throttle(0.5)))
            events.append((at + args.throttle_seconds, "throttle off", lambda: self.throttle(0.0)))
            at += args.throttle_every
        if not args.no_emulator_restart:
            events.append(
                (
                    args.duration * 0.5 + 7,
                    "emulator",
                    lambda: threading.Thread(target=self.restart_emulator, daemon=True).start(),
                )
            )
        events.sort(key=lambda e: e[0])
        return events

    def kill_consumer(self) -> None:
        assert self.consumer is not None
        self.sample_rss()
        self.consumer.kill()
        self.consumer.start()
        self.timeline.note(f"consumer: kill -9, started again (start #{self.consumer.starts})")

    def throttle(self, fraction: float) -> None:
        with self._lock:
            self.fakes.send(("faults", {"throttle": fraction}))
            self.fakes.recv()
        self.timeline.note(f"personalize: throttling {fraction:.0%} of calls")

    def report_from_fakes(self) -> dict[str, Any]:
        with self._lock:
            self.fakes.send(("report", None))
            report: dict[str, Any] = self.fakes.recv()
        return report

    def run(self) -> None:
        base, config = self.set_up()
        host, port = base.removeprefix("http://").split(":")
        args = self.args
        load = Load(
            host, int(port), f"/events/{NAMESPACE}", args.rate, args.connections, args.sessions
        )
        self.timeline = Timeline()
        load.start()
        end_rss = self.drive()
        self.timeline.note("load: stopping")
        self.throttle(0.0)
        result = load.stop(grace=60)
        report, caught, drain_seconds = self.drain(set(result.accepted))
        assert self.consumer is not None
        consumer_graceful = self.consumer.stop(timeout=60)
        archive, archive_visible, stream_copies = archived_ids(self.data / "archive")
        self.print_report(
            Outcome(
                result,
                report,
                archive,
                archive_visible,
                stream_copies,
                dead_letters(config, self.data),
                end_rss,
                caught,
                drain_seconds,
                consumer_graceful,
            )
        )

    def drive(self) -> dict[str, int]:
        """Until the end of the run: the faults on their schedule, and the RSS of every process
        sampled every 5 s from the end of the warm-up. Returns the RSS at the end."""
        warm = min(20.0, self.args.duration / 5)  # before the first kill, at 30 s by default
        pending = self.schedule()
        warm_sampled = False
        next_sample = 0.0
        while self.timeline.now() < self.args.duration:
            now = self.timeline.now()
            while pending and pending[0][0] <= now:
                _, _, action = pending.pop(0)
                action()
            if now >= warm and not warm_sampled:
                self.sample_rss()
                self.rss = {name: values[-1:] for name, values in self.rss.items()}
                warm_sampled = True
            elif now >= next_sample and warm_sampled:
                self.sample_rss()
            if now >= next_sample:
                next_sample = now + 5
            time.sleep(0.05)
        self.sample_rss()
        return {name: values[-1][1] for name, values in self.rss.items()}

    def drain(self, wanted: set[str]) -> tuple[dict[str, Any], bool, float]:
        """Wait for the targets to hold every accepted event: what the fakes report, whether
        they caught up within ``--drain-timeout``, and how long it took."""

        def caught_up() -> dict[str, Any] | None:
            report = self.report_from_fakes()
            done = all(wanted <= {i for i, _ in report[t]} for t in ("personalize", "hook"))
            return report if done else None

        drained = time.monotonic()
        try:
            report = wait_until(
                "targets to catch up", caught_up, self.args.drain_timeout, tolerate=False
            )
            caught = True
        except SystemExit:
            report = self.report_from_fakes()
            caught = False
        return report, caught, time.monotonic() - drained

    def close(self) -> None:
        for child in reversed(self.children):
            if child is self.consumer:
                child.kill()
            else:
                child.stop(timeout=5)
        if self.proxy is not None:
            self.proxy.close()
        if self.fakes is not None:
            with contextlib.suppress(OSError):
                self.fakes.send(("stop", None))
        if self.fakes_process is not None:
            self.fakes_process.join(5)
            if self.fakes_process.is_alive():
                self.fakes_process.kill()

    def print_report(self, outcome: Outcome) -> None:
        rows = [
            figures("personalize", outcome.report["personalize"], outcome.load),
            figures("hook (http)", outcome.report["hook"], outcome.load),
            figures("archive", [(i, None) for i in outcome.archive], outcome.load),
        ]
        self.print_load(outcome)
        print_targets(rows, outcome)
        self.print_lag_windows(rows[:2])
        self.print_rss(outcome.end_rss)
        print("\nfaults:")
        for line in self.timeline.faults:
            print(f"  {line}")

    def print_load(self, outcome: Outcome) -> None:
        args, load = self.args, outcome.load
        sent = sum(load.statuses.values())
        print(
            f"\nsoak — {args.duration:.0f}s at {args.rate:g} events/s, {os.cpu_count()} cores; "
            f"consumer kill -9 every {args.kill_every:g}s (lease {args.lease_seconds:g}s), "
            f"Personalize throttling 50% for {args.throttle_seconds:g}s every "
            f"{args.throttle_every:g}s, emulator restart: "
            + ("no" if args.no_emulator_restart else f"{self.outage_text()}")
        )
        print(
            f"\naccepted {len(load.accepted)} events ({len(load.accepted) / args.duration:.0f}/s); "
            f"requests {sent}: "
            + ", ".join(f"{status} x{n}" for status, n in sorted(load.statuses.items()))
            + f"; connection errors {load.connection_errors}; events accepted after a retry "
            f"{load.retried_events}; never accepted {load.unfinished}"
        )
        print(
            f"ack latency (202s): p50 {1000 * percentile(load.latencies, 0.5):.1f} ms, "
            f"p99 {1000 * percentile(load.latencies, 0.99):.1f} ms, "
            f"max {1000 * max(load.latencies, default=0):.0f} ms; "
            f"first send to 202 incl. retries: p99 {percentile(load.accept_delays, 0.99):.2f} s, "
            f"max {max(load.accept_delays, default=0):.1f} s"
        )
        print(
            f"targets {'caught up' if outcome.caught_up else 'DID NOT catch up'} "
            f"{outcome.drain_seconds:.1f}s after the load stopped; consumer stopped "
            f"{'by SIGTERM' if outcome.consumer_graceful else 'by SIGKILL (SIGTERM timed out)'}\n"
        )

    def print_lag_windows(self, rows: list[TargetFigures]) -> None:
        print(
            "\nlag: first delivery minus the 202 (Personalize: the call's arrival at the fake); "
            f"max lag of the events accepted in each {LAG_WINDOW:.0f}s window:"
        )
        for row in rows:
            windows: dict[int, float] = {}
            for accepted_at, seconds in row.lags:
                index = int((accepted_at - self.timeline.start) // LAG_WINDOW)
                windows[index] = max(windows.get(index, seconds), seconds)
            print(
                f"  {row.name:14} "
                + " ".join(
                    f"{windows[n]:.1f}" if n in windows else "-"
                    for n in range(max(windows, default=-1) + 1)
                )
            )

    def print_rss(self, end_rss: dict[str, int]) -> None:
        print(f"\n{'process':32} {'RSS after warm-up':>17} {'RSS at end':>11} {'growth':>8}")
        for name, values in self.rss.items():
            if name not in end_rss:
                continue
            first, last = values[0][1], end_rss[name]
            growth = (last - first) / first
            flag = "  > 20%" if growth > 0.2 else ""
            print(
                f"{name:32} {first / 1024:>14.1f} MiB {last / 1024:>7.1f} MiB {growth:>+7.0%}{flag}"
            )
        print(
            "(consume: the incarnation running after warm-up vs the one running at the end; "
            "kinesis-local: the same unless restarted, and it holds every record in memory)"
        )

    def outage_text(self) -> str:
        if self.outage is None:
            return "did not happen"
        began, ended = self.outage
        return f"at {began:.0f}s for {ended - began:.1f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description="Soak the whole system with faults.")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sessions", type=int, default=640)
    parser.add_argument("--kill-every", type=float, default=30.0, help="0: never")
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    parser.add_argument("--throttle-every", type=float, default=45.0)
    parser.add_argument("--throttle-seconds", type=float, default=5.0)
    parser.add_argument("--no-emulator-restart", action="store_true")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    args = parser.parse_args()
    os.environ.update(AWS_ENV)
    for name in AWS_ENV_REMOVED:
        os.environ.pop(name, None)
    work = Path(tempfile.mkdtemp(prefix="p13n-soak-"))
    soak = Soak(args, work)
    try:
        soak.run()
    finally:
        soak.close()
        if args.keep:
            print(f"\nwork folder kept: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
