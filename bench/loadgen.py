"""A small HTTP/1.1 load generator, run as its own process so it never shares the server's CPU
scheduling with the service's event loop.

Each connection is one client: it keeps its socket alive and sends its requests one after
another (the next only after the previous answer), so per-client order is the order sent.
Prints one JSON object: requests, statuses, seconds, requests/s, p50/p99 latency (ms).

On a 2-core machine the generator shares the cores with the server under test, so its own CPU
per request decides how much is left for the server: connections are bare asyncio protocols on
uvloop (about a third of the CPU of asyncio streams on the default loop), as wrk is C for the
same reason.

    python -m bench.loadgen --url http://127.0.0.1:8000/events/demo --connections 50 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def event_body(session: str, user: str, index: int) -> bytes:
    """A typical one-event request: a view of an item in a session."""
    return json.dumps(
        {
            "sessionId": session,
            "userId": user,
            "eventList": [
                {
                    "eventType": "View",
                    "itemId": f"item-{(index * 7919) % 5000}",
                }
            ],
        },
        separators=(",", ":"),
    ).encode()


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time.

    ``exchange(request)`` writes the request's bytes and returns the answer's head (status line
    and headers) once the whole answer, body included (by its ``content-length``), has arrived.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._lost: BaseException | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        _, connection = await asyncio.get_running_loop().create_connection(cls, host, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end])
        size = end + 4 + content_length(head)
        if len(self._buffer) < size:
            return
        del self._buffer[:size]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(head)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = exc or ConnectionError("the server closed the connection")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    async def exchange(self, request: bytes) -> bytes:
        if self._lost is not None or self._transport is None:
            raise ConnectionError("the connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def content_length(head: bytes) -> int:
    start = head.lower().find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    return int(head[start + 17 :].split(b"\r\n", 1)[0])


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in an answer's head, if present."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def run_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed (it comes with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def client(
    host: str,
    port: int,
    path: str,
    count: int,
    number: int,
    latencies: list[float],
    statuses: Counter,
) -> None:
    session = uuid.uuid4().hex
    user = f"user-{number}"
    connection = await Connection.open(host, port)
    try:
        for index in range(count):
            body = event_body(session, user, index)
            request = (
                f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"user-agent: p13n-bench/1\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            head = await connection.exchange(request)
            latencies.append(time.perf_counter() - started)
            statuses[int(head[9:12])] += 1
    finally:
        connection.close()


async def run(url: str, connections: int, requests: int) -> dict[str, object]:
    parts = urlsplit(url)
    latencies: list[float] = []
    statuses: Counter = Counter()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            client(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                parts.path,
                requests,
                n,
                latencies,
                statuses,
            )
            for n in range(connections)
        )
    )
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(seconds, 3),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200, help="per connection")
    args = parser.parse_args()
    print(json.dumps(run_loop(run(args.url, args.connections, args.requests))))


if __name__ == "__main__":
    main()
