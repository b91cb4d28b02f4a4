"""A small HTTP/1.1 load generator, run as its own process so it never shares the server's CPU
scheduling with the service's event loop.

Each connection is one client: it keeps its socket alive and sends its requests one after
another (the next only after the previous answer), so per-client order is the order sent.
Prints one JSON object: requests, statuses, seconds, requests/s, p50/p99 latency (ms).

    python -m bench.loadgen --url http://127.0.0.1:8000/events/demo --connections 50 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit


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
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for index in range(count):
            body = event_body(session, user, index)
            request = (
                f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"user-agent: p13n-bench/1\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
    finally:
        writer.close()


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
    print(json.dumps(asyncio.run(run(args.url, args.connections, args.requests))))


if __name__ == "__main__":
    main()
