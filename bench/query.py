"""Benchmark of the query path: GET /recommend-items against the running service.

Every server and the load generator run as separate processes. The variation is an ``http``
one that calls a zero-latency recommender (``bench.references recommender``: 25 fixed items);
the items are decorated from the data dir's ``localdb`` store, loaded with ``p13n items load``
first. Scenarios, in one run:

* the recommender alone, called directly at the paced rate: its own latency;
* a cache miss (no ``maxAge``; every request names a new user, so nothing is coalesced either):
  paced at ``--rate`` for the latency and its overhead (p13n's latency minus the recommender's
  own, p50 and p99 each), then closed-loop with ``--clients`` for the maximum throughput;
* a cache hit (``maxAge`` 300, ten users, warmed first): paced, then closed-loop in turns with
  the bare endpoint (``--rounds`` each, the median round counts);
* the bare endpoint (``bench.references bare``: a fixed body as large as p13n's answer on the
  same uvicorn + Starlette stack), closed-loop: the ceiling the hit is compared with;
* the cache hit again with ``Accept-Encoding: gzip`` (answered gzipped: the entry keeps its
  compressed bytes), in the same turns, against the same bare endpoint (uncompressed).

Paced load is open-loop: request *i* is sent at ``start + i / rate`` on an idle keep-alive
connection (a new one when none is idle), whether or not earlier answers came back. Latency is
measured from the moment a request is written to the moment its whole answer is read.

    .venv/bin/python -m bench.query [--duration 10] [--clients 50] [--rate 200] [--rounds 5]

The load generator on its own (``{n}`` in the URL becomes the user number: the request's
sequence number, modulo ``--users`` when given)::

    .venv/bin/python -m bench.query load --url 'http://127.0.0.1:8000/recommend-items/demo/for-you/u{n}' \\
        --duration 5 (--rate 200 | --connections 50) [--users 10] [--gzip]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.ingest import BIN, PYTHON, ROOT, free_port, wait_for, wait_port
from bench.loadgen import Connection, header, percentile, run_loop
from bench.references import DECORATED_BODY, item_ids, item_metadata

NAMESPACE = "bench"
HIT_USERS = 10
OVERHEAD_P99_GOAL_MS = 3.0
HIT_SHARE_GOAL = 0.60

# -- the load generator (runs in its own process) ------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection sending GETs one after another."""

    def __init__(self, connection: Connection, host: str, gzip: bool = False):
        self.connection = connection
        self.host = host
        self.extra = "accept-encoding: gzip\r\n" if gzip else ""

    @classmethod
    async def open(cls, host: str, port: int, gzip: bool = False) -> _Connection:
        return cls(await Connection.open(host, port), host, gzip)

    async def get(self, path: str) -> tuple[int, str | None, str | None]:
        """Status, ``x-p13n-cache`` and ``content-encoding`` of one GET; the body is read and
        dropped."""
        head = await self.connection.exchange(
            f"GET {path} HTTP/1.1\r\nhost: {self.host}\r\naccept: application/json\r\n"
            f"user-agent: p13n-bench/1\r\n{self.extra}\r\n".encode()
        )
        cache = header(head, b"x-p13n-cache")
        encoding = header(head, b"content-encoding")
        return (
            int(head[9:12]),
            cache.decode() if cache is not None else None,
            encoding.decode() if encoding is not None else None,
        )

    def close(self) -> None:
        self.connection.close()


class _Tally:
    def __init__(self, url: str, users: int, gzip: bool = False) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.users = users
        self.sequence = itertools.count()
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.cache: Counter[str] = Counter()
        self.encodings: Counter[str] = Counter()

    def next_path(self) -> str:
        n = next(self.sequence)
        return self.target.replace("{n}", str(n % self.users if self.users else n))

    async def one(self, connection: _Connection) -> None:
        path = self.next_path()
        started = time.perf_counter()
        status, cache, encoding = await connection.get(path)
        self.latencies.append(time.perf_counter() - started)
        self.statuses[status] += 1
        if cache is not None:
            self.cache[cache] += 1
        self.encodings[encoding or "identity"] += 1

    def result(self, seconds: float, **extra: object) -> dict[str, Any]:
        latencies = sorted(self.latencies)
        ok = sum(v for k, v in self.statuses.items() if 200 <= k < 300)
        return {
            "requests": len(latencies),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "cache": dict(sorted(self.cache.items())),
            "encodings": dict(sorted(self.encodings.items())),
            "seconds": round(seconds, 3),
            "rps": round(len(latencies) / seconds, 1),
            "ok_rps": round(ok / seconds, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
            "max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 3),
            **extra,
        }


async def closed_loop(
    url: str, connections: int, duration: float, users: int, gzip: bool = False
) -> dict[str, Any]:
    """``connections`` clients, each sending its next request when the previous one is answered."""
    tally = _Tally(url, users, gzip)
    opened = [await _Connection.open(tally.host, tally.port, gzip) for _ in range(connections)]
    started = time.perf_counter()
    deadline = started + duration

    async def client(connection: _Connection) -> None:
        while time.perf_counter() < deadline:
            await tally.one(connection)

    try:
        await asyncio.gather(*(client(c) for c in opened))
    finally:
        for connection in opened:
            connection.close()
    return tally.result(time.perf_counter() - started, mode=f"{connections} clients")


async def paced(url: str, rate: float, duration: float, users: int) -> dict[str, Any]:
    """Open loop: request ``i`` is due at ``start + i / rate``, sent on an idle connection."""
    tally = _Tally(url, users)
    idle = [await _Connection.open(tally.host, tally.port) for _ in range(8)]
    everyone = list(idle)
    late = 0

    async def send() -> None:
        connection = idle.pop() if idle else await _Connection.open(tally.host, tally.port)
        if connection not in everyone:
            everyone.append(connection)
        await tally.one(connection)
        idle.append(connection)

    running: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    for index in range(int(rate * duration)):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.002:
            late += 1
        task = asyncio.ensure_future(send())
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    seconds = time.perf_counter() - started
    for connection in everyone:
        connection.close()
    return tally.result(
        seconds, mode=f"{rate:g}/s paced", late_sends=late, connections=len(everyone)
    )


def load_main(args: argparse.Namespace) -> None:
    if args.rate:
        result = run_loop(paced(args.url, args.rate, args.duration, args.users))
    else:
        result = run_loop(
            closed_loop(args.url, args.connections, args.duration, args.users, args.gzip)
        )
    print(json.dumps(result))


# -- the benchmark -------------------------------------------------------------------------------


@contextmanager
def server(args: list[str], ready_url: str | None, port: int) -> Iterator[int]:
    """Run ``args`` until the block ends (SIGTERM, then kill), yielding its pid once it
    answers; its output is discarded."""
    with tempfile.TemporaryFile(prefix="p13n-bench-") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_port(port)
            if ready_url:
                wait_for(ready_url)
            yield proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads), where /proc tells it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    url: str,
    duration: float,
    pid: int,
    *,
    rate: float = 0,
    clients: int = 0,
    users: int = 0,
    gzip: bool = False,
) -> dict:
    """One run of the load generator, in its own process, and the server's CPU per request."""
    args = [PYTHON, "-m", "bench.query", "load", "--url", url, "--duration", str(duration)]
    args += ["--rate", str(rate)] if rate else ["--connections", str(clients)]
    args += ["--users", str(users)] + (["--gzip"] if gzip else [])
    before = cpu_seconds(pid)
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT)
    after = cpu_seconds(pid)
    result: dict = json.loads(out.stdout)
    if before is not None and after is not None and result["requests"]:
        result["cpu_ms_per_request"] = round((after - before) * 1000 / result["requests"], 3)
    return result


def bench_config(recommender_port: int) -> dict[str, Any]:
    # The http resolver expands {userId} and {numResults}, URL-encoded.
    url = f"http://127.0.0.1:{recommender_port}/recs/{{userId}}?n={{numResults}}"
    variations = {"zero-latency": {"type": "http", "url": url}}
    return {
        "version": "bench-query",
        "namespaces": {
            NAMESPACE: {
                "inferenceItemMetadata": {"type": "localdb"},
                "recommenders": {
                    "recommend-items": {
                        "miss": {"cacheControl": {}, "variations": variations},
                        "hit": {
                            "cacheControl": {"userSpecified": {"maxAge": 300}},
                            "variations": variations,
                        },
                    }
                },
            }
        },
    }


def load_items(data: str, config_path: Path) -> None:
    items = Path(data) / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"itemId": i, **item_metadata(i)}) + "\n" for i in item_ids())
    )
    command = [str(BIN / "p13n"), "items", "load", str(items), "--namespace", NAMESPACE]
    subprocess.run(
        [*command, "--data-dir", data, "--config", str(config_path)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


def check_answer(url: str) -> int:
    """The answer is 200 with 25 decorated items; returns its size in bytes."""
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read()
    items = json.loads(body)["itemList"]
    if len(items) != len(item_ids()) or not all("metadata" in item for item in items):
        raise SystemExit(f"{url}: expected {len(item_ids())} decorated items, got {body[:300]!r}")
    return len(body)


def gzipped_size(url: str) -> int | None:
    """The size of the gzipped answer to ``url`` (checked to be the whole document), or None
    when the answer is not gzipped (a server without compression)."""
    request = urllib.request.Request(url, headers={"accept-encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=5) as response:
        if response.headers.get("content-encoding") != "gzip":
            return None
        body = response.read()
    json.loads(gzip.decompress(body))
    return len(body)


def median_ratio(rounds: list[dict], references: list[dict]) -> float:
    """The median of the round-by-round ratios of 2xx/s (each pair ran back to back)."""
    ratios = sorted(r["ok_rps"] / b["ok_rps"] for r, b in zip(rounds, references, strict=True))
    return round(ratios[len(ratios) // 2], 3)


def median_round(rounds: list[dict]) -> dict:
    """The round with the median 2xx/s, with every round's figure beside it."""
    result = dict(sorted(rounds, key=lambda r: r["ok_rps"])[len(rounds) // 2])
    result["ok_rps_all"] = [r["ok_rps"] for r in rounds]
    return result


def run_scenarios(
    duration: float, clients: int, rate: float, rounds: int
) -> tuple[list[dict], int]:
    warm = min(2.0, duration)
    results: list[dict] = []

    def named(name: str, result: dict) -> None:
        result["name"] = name
        results.append(result)

    recommender_port = free_port()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = f"/recommend-items/{NAMESPACE}/{{rec}}/user-{{n}}?numResults={len(item_ids())}"
    miss = base + path.replace("{rec}", "miss")
    hit = base + path.replace("{rec}", "hit")
    with tempfile.TemporaryDirectory() as data:
        config_path = Path(data) / "config.json"
        config_path.write_text(json.dumps(bench_config(recommender_port)))
        load_items(data, config_path)
        serve = [str(BIN / "p13n"), "serve", "--port", str(port), "--data-dir", data]
        # The query path alone; access logs stay on, as in production.
        serve += ["--config", str(config_path), "--no-consumers"]
        recommender = [PYTHON, "-m", "bench.references", "recommender", "--port"]
        with server([*recommender, str(recommender_port)], None, recommender_port) as rec_pid:
            direct = f"http://127.0.0.1:{recommender_port}/recs/user-{{n}}?n={len(item_ids())}"
            with server(serve, f"{base}/readyz", port) as pid:
                size = check_answer(miss.replace("{n}", "check"))
                load(direct, warm, rec_pid, rate=rate)
                named("recommender alone (direct)", load(direct, duration, rec_pid, rate=rate))
                load(miss, warm, pid, rate=rate)
                named("p13n miss", load(miss, duration, pid, rate=rate))
                named("p13n miss", load(miss, duration, pid, clients=clients))
                load(hit, warm, pid, clients=4, users=HIT_USERS)
                named("p13n hit", load(hit, duration, pid, rate=rate, users=HIT_USERS))
                # The cache hit against the bare endpoint, both up at once, taking turns for
                # --rounds rounds: a slow spell of the machine falls on both alike.
                bare_port = free_port()
                bare = f"http://127.0.0.1:{bare_port}" + path.replace("{rec}", "hit")
                references = [PYTHON, "-m", "bench.references", "bare", "--port", str(bare_port)]
                with server(references, None, bare_port) as bare_pid:
                    load(bare, warm, bare_pid, clients=4, users=HIT_USERS)
                    hits, bares, gzipped = [], [], []
                    for _ in range(rounds):
                        hits.append(load(hit, duration, pid, clients=clients, users=HIT_USERS))
                        bares.append(
                            load(bare, duration, bare_pid, clients=clients, users=HIT_USERS)
                        )
                        gzipped.append(
                            load(hit, duration, pid, clients=clients, users=HIT_USERS, gzip=True)
                        )
                hit_result = median_round(hits)
                # The ratio round by round (each pair ran back to back), and its median.
                hit_result["share_of_bare"] = median_ratio(hits, bares)
                named("p13n hit", hit_result)
                named("bare endpoint (same stack)", median_round(bares))
                gzip_result = median_round(gzipped)
                gzip_result["share_of_bare"] = median_ratio(gzipped, bares)
                gzip_result["size"] = gzipped_size(hit.replace("{n}", "0"))
                named("p13n hit, gzip", gzip_result)
    return results, size


def report(results: list[dict], size: int, duration: float, clients: int, rate: float) -> None:
    print(
        f"\nGET /recommend-items, {len(item_ids())} items decorated from localdb, http variation "
        f"against a zero-latency recommender; keep-alive; {duration:g} s per scenario; "
        f"{os.cpu_count()} cores; answer {size} B (bare {len(DECORATED_BODY)} B)\n"
    )
    header = (
        f"{'scenario':28} {'load':>14} {'req/s':>8} {'2xx/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'cpu ms/req':>10} {'non-2xx':>8}  cache"
    )
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for r in results:
        cache = ",".join(f"{k}={v}" for k, v in r["cache"].items()) or "-"
        print(
            f"{r['name']:28} {r['mode']:>14} {r['rps']:>8.0f} {r['ok_rps']:>8.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r.get('cpu_ms_per_request', nan):>10.3f} "
            f"{non_2xx(r):>8}  {cache}"
        )
    own, miss_paced, hit_closed, bare = results[0], results[1], results[4], results[5]
    gzipped = results[6]
    over_p50 = miss_paced["p50_ms"] - own["p50_ms"]
    over_p99 = miss_paced["p99_ms"] - own["p99_ms"]
    share = hit_closed.get("share_of_bare", hit_closed["ok_rps"] / bare["ok_rps"])
    print(
        f"\nmiss overhead at {rate:g} req/s (p13n minus the recommender's own): "
        f"p50 {over_p50:.2f} ms, p99 {over_p99:.2f} ms"
    )
    failed = non_2xx(miss_paced)
    print(
        f"goal: miss overhead p99 <= {OVERHEAD_P99_GOAL_MS:g} ms at {rate:g} req/s: "
        f"{over_p99:.2f} ms, {failed} non-2xx, "
        f"{verdict(over_p99 <= OVERHEAD_P99_GOAL_MS and failed == 0)}"
    )
    print(
        f"goal: cache-hit throughput >= {HIT_SHARE_GOAL:.0%} of the bare endpoint: "
        f"{share:.0%} (median of the round-by-round ratios; median rounds {hit_closed['ok_rps']:.0f} "
        f"vs {bare['ok_rps']:.0f} 2xx/s; "
        f"rounds {_figures(hit_closed)} vs {_figures(bare)}), "
        f"{verdict(share >= HIT_SHARE_GOAL)}"
    )
    print(
        f"goal: cache-hit throughput >= {HIT_SHARE_GOAL:.0%} of the bare endpoint with "
        f"Accept-Encoding: gzip (answer {gzipped['size'] or 'NOT'} B gzipped, bare "
        f"{len(DECORATED_BODY)} B plain): {gzipped['share_of_bare']:.0%} (median rounds {gzipped['ok_rps']:.0f} vs "
        f"{bare['ok_rps']:.0f} 2xx/s; rounds {_figures(gzipped)} vs {_figures(bare)}; "
        f"encodings {gzipped['encodings']}), {verdict(gzipped['share_of_bare'] >= HIT_SHARE_GOAL)}"
    )
    print(
        "\ncpu ms/req: CPU time of the server answering (all its threads) per request; "
        "for the misses, p13n's own (the recommender's is apart)."
    )
    print(json.dumps(results))


def _figures(result: dict) -> str:
    return "/".join(f"{v:.0f}" for v in result.get("ok_rps_all", [result["ok_rps"]]))


def non_2xx(result: dict) -> int:
    return sum(v for k, v in result["statuses"].items() if not k.startswith("2"))


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark GET /recommend-items.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--clients", type=int, default=50, help="closed-loop clients")
    parser.add_argument("--rate", type=float, default=200.0, help="paced requests per second")
    parser.add_argument(
        "--rounds", type=int, default=5, help="turns of cache hit and bare; the median counts"
    )
    commands = parser.add_subparsers(dest="command")
    generator = commands.add_parser("load", help="run the load generator alone")
    generator.add_argument("--url", required=True, help="{n} becomes the user number")
    generator.add_argument("--duration", type=float, default=5.0)
    generator.add_argument("--rate", type=float, default=0.0, help="paced; else closed-loop")
    generator.add_argument("--connections", type=int, default=50)
    generator.add_argument("--users", type=int, default=0, help="distinct users; 0: all new")
    generator.add_argument("--gzip", action="store_true", help="send Accept-Encoding: gzip")
    args = parser.parse_args()
    if args.command == "load":
        load_main(args)
        return
    results, size = run_scenarios(args.duration, args.clients, args.rate, args.rounds)
    report(results, size, args.duration, args.clients, args.rate)


if __name__ == "__main__":
    main()
