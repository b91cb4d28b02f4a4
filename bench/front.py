"""Benchmark of the web stack's own cost (``web.stack``): a cache hit through the whole ASGI app,
in-process (no sockets, no server), in CPU microseconds per request.

The app is ``create_app`` on a config with one cached ``http`` recommender (the zero-latency
``bench.references recommender``, 25 items, run as a process). After a warm-up the same ten
cached answers are asked for again and again; the best of ``--rounds`` rounds of ``--requests``
counts; the variants take turns within each round. Variants, each its own app:

* plain: no ``Origin``, no ``Accept-Encoding`` (what a server-side client sends);
* origin: a page's request (``Origin``; CORS headers added by ``web.cors``);
* gzip: ``Accept-Encoding: gzip``, answers compressed from 512 bytes (the cached entry keeps its
  compressed bytes: what a hit costs with compression);
* the first two again with Starlette's ``CORSMiddleware`` wrapped around the app instead (and
  web.cors off), with the same settings: the alternative this project does not take.

    .venv/bin/python -m bench.front [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message

from bench.ingest import PYTHON, free_port
from bench.query import server
from p13n.app import create_app
from schemas.sources import ConfigHolder

USERS = 10
ORIGIN = (b"origin", b"https://shop.example")
GZIP = (b"accept-encoding", b"gzip")


class _Source:
    name = "bench-front"

    def __init__(self, document: dict[str, Any]) -> None:
        self._raw = json.dumps(document).encode()

    def read(self) -> bytes:
        return self._raw


def config(recommender_port: int, data_dir: str, compression: bool) -> dict[str, Any]:
    url = f"http://127.0.0.1:{recommender_port}/recs/{{userId}}?n={{numResults}}"
    document: dict[str, Any] = {
        "version": "bench-front",
        "dataDir": data_dir,
        "namespaces": {
            "bench": {
                "recommenders": {
                    "recommend-items": {
                        "hit": {
                            "cacheControl": {"userSpecified": {"maxAge": 300}},
                            "variations": {"v": {"type": "http", "url": url}},
                        }
                    }
                }
            }
        },
    }
    if compression:
        document["compression"] = {"minimumBytes": 512}
    return document


class _Subject:
    """One variant's app, started (lifespan), and the request it is asked again and again."""

    def __init__(
        self, document: dict[str, Any], with_cors: bool, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.app = wrap(create_app(ConfigHolder(_Source(document))), with_cors)
        self.headers = [(b"host", b"127.0.0.1:8000"), (b"accept", b"application/json"), *headers]
        self.last: dict[str, Any] = {}
        self._in: asyncio.Queue[Message] = asyncio.Queue()
        self._out: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None

    async def start(self) -> None:
        await self._in.put({"type": "lifespan.startup"})
        lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.ensure_future(self.app(lifespan, self._in.get, self._out.put))
        started = await self._out.get()
        if started["type"] != "lifespan.startup.complete":
            raise SystemExit(f"the app did not start: {started}")

    async def stop(self) -> None:
        await self._in.put({"type": "lifespan.shutdown"})
        await self._out.get()
        assert self._task is not None
        await self._task

    def scope(self, n: int) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/recommend-items/bench/hit/user-{n % USERS}",
            "raw_path": b"",
            "query_string": b"numResults=25",
            "root_path": "",
            "headers": list(self.headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }

    async def receive(self) -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.last["gzip"] = (b"content-encoding", b"gzip") in message["headers"]
            self.last["status"] = message["status"]
        else:
            self.last["size"] = len(message.get("body", b""))

    async def run(self, requests: int) -> float:
        """µs of CPU per request over ``requests`` requests."""
        began = time.process_time()
        for n in range(requests):
            await self.app(self.scope(n), self.receive, self.send)
        return (time.process_time() - began) / requests * 1e6


async def measure(
    subjects: list[_Subject], requests: int, rounds: int
) -> list[tuple[float, int, bool]]:
    """Best µs/request of each subject over ``rounds`` rounds, the subjects taking turns in
    each round (a slow spell of the machine falls on all alike); with each answer's size and
    whether it came gzipped."""
    for subject in subjects:
        await subject.start()
        await subject.run(max(USERS * 10, requests // 10))  # fills the cache, warms the memos
        if subject.last.get("status") != 200:
            raise SystemExit(f"the warm-up was answered {subject.last}")
    best = [float("inf")] * len(subjects)
    for _ in range(rounds):
        for index, subject in enumerate(subjects):
            best[index] = min(best[index], await subject.run(requests))
    for subject in subjects:
        await subject.stop()
    return [
        (us, int(s.last["size"]), bool(s.last["gzip"]))
        for us, s in zip(best, subjects, strict=True)
    ]


def variants() -> list[tuple[str, list[tuple[bytes, bytes]], bool, bool]]:
    """(name, request headers, compression from 512 B, wrapped in CORSMiddleware)."""
    return [
        ("plain", [], False, False),
        ("origin", [ORIGIN], False, False),
        ("gzip", [GZIP], True, False),
        ("plain + CORSMiddleware", [], False, True),
        ("origin + CORSMiddleware", [ORIGIN], False, True),
    ]


def wrap(app: ASGIApp, with_cors: bool) -> ASGIApp:
    if not with_cors:
        return app
    return CORSMiddleware(
        app,
        allow_origins=["*"],
        allow_methods=["GET", "POST"],
        allow_headers=["content-type", "x-api-key", "authorization", "if-none-match"],
        max_age=500,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="CPU per cache hit through the web stack, in-process."
    )
    parser.add_argument("--requests", type=int, default=20000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant; best counts")
    args = parser.parse_args()
    port = free_port()
    recommender = [PYTHON, "-m", "bench.references", "recommender", "--port", str(port)]
    results: list[dict[str, Any]] = []
    with server(recommender, None, port), tempfile.TemporaryDirectory() as data:

        async def everything() -> list[tuple[float, int, bool]]:
            subjects = []
            for index, (_, headers, compression, with_cors) in enumerate(variants()):
                document = config(port, f"{data}/{index}", compression)
                if with_cors:  # CORS by Starlette's middleware alone
                    document["cors"] = {"enabled": False}
                subjects.append(_Subject(document, with_cors, headers))
            return await measure(subjects, args.requests, args.rounds)

        measured = asyncio.run(everything())
    for (name, *_), (us, size, gzipped) in zip(variants(), measured, strict=True):
        results.append({"variant": name, "us_per_request": round(us, 2), "bytes": size})
        print(f"{name:26} {us:7.2f} µs/request  answer {size} B{' gzip' if gzipped else ''}")
    plain = results[0]["us_per_request"]
    for result in results[1:]:
        print(f"{result['variant']:26} {result['us_per_request'] - plain:+7.2f} µs vs plain")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
