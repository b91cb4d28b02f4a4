"""The soak's producer: a steady rate of one-event POST /events requests, honouring 503/429.

``connections`` clients, each on its own keep-alive socket, own ``sessions`` sessions and send
one request at a time; ticket n of the global schedule (``start + n / rate``) goes to client
``n % connections``, so a client that fell behind (an outage) catches up at once. A 503 or 429
is waited out (``Retry-After``) and the same event is sent again, as the producer's contract
asks; a connection error or a timeout is retried the same way (such an event may then be in
the stream twice, never lost). Every event has its own ``eventId``, and one session's events
are sent strictly one after the other, so the order of their 202s is the session's order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

READ_TIMEOUT = 30.0


@dataclass
class LoadResult:
    accepted: dict[str, float] = field(default_factory=dict)  # event id -> monotonic 202 time
    sessions: dict[str, list[str]] = field(default_factory=dict)  # accepted ids, in order
    latencies: list[float] = field(default_factory=list)  # seconds, of requests answered 202
    accept_delays: list[float] = field(default_factory=list)  # first send to 202, retries included
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    retried_events: int = 0  # events accepted after at least one 503/429/error
    unfinished: int = 0  # events never accepted (still retrying when the load stopped)


class Load:
    def __init__(
        self, host: str, port: int, path: str, rate: float, connections: int, sessions: int
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.rate = rate
        self.connections = connections
        self.sessions_per_client = max(1, sessions // connections)
        self.result = LoadResult()
        self._stop = threading.Event()
        self._give_up_at = float("inf")
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self, grace: float) -> LoadResult:
        """No new events; events still being retried get ``grace`` seconds to be accepted."""
        self._give_up_at = time.monotonic() + grace
        self._stop.set()
        if self._thread is not None:
            self._thread.join(grace + READ_TIMEOUT + 5)
        return self.result

    async def _run(self) -> None:
        start = time.monotonic() + 0.1
        await asyncio.gather(*(self._client(n, start) for n in range(self.connections)))

    async def _client(self, number: int, start: float) -> None:
        sessions = [f"s{number:03d}-{k:03d}" for k in range(self.sessions_per_client)]
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        ticket = number
        sequence = 0
        while not self._stop.is_set():
            delay = start + ticket / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            session = sessions[sequence % len(sessions)]
            event_id = f"{session}-{sequence // len(sessions):05d}"
            connection = await self._send(connection, session, event_id)
            ticket += self.connections
            sequence += 1
        if connection is not None:
            connection[1].close()

    async def _send(
        self,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
        session: str,
        event_id: str,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        body = json.dumps(
            {
                "sessionId": session,
                "userId": f"u-{session}",
                "eventList": [
                    {
                        "eventType": "View",
                        "eventId": event_id,
                        "itemId": f"item-{hash(event_id) % 500}",
                    }
                ],
            },
            separators=(",", ":"),
        ).encode()
        request = (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"user-agent: p13n-soak/1\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body
        result = self.result
        first = time.monotonic()
        retried = False
        while True:
            if time.monotonic() > self._give_up_at:
                result.unfinished += 1
                return connection
            started = time.monotonic()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(self.host, self.port)
                reader, writer = connection
                writer.write(request)
                status, retry_after = await asyncio.wait_for(_answer(reader), READ_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                result.connection_errors += 1
                if connection is not None:
                    connection[1].close()
                connection = None
                retried = True
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            result.statuses[status] += 1
            if status == 202:
                result.accepted[event_id] = now
                result.sessions.setdefault(session, []).append(event_id)
                result.latencies.append(now - started)
                result.accept_delays.append(now - first)
                result.retried_events += retried
                return connection
            if status in (429, 503):
                retried = True
                await asyncio.sleep(min(retry_after if retry_after is not None else 1.0, 5.0))
                continue
            # Anything else is a bug in the request or the service: counted, not retried.
            return connection


async def _answer(reader: asyncio.StreamReader) -> tuple[int, float | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    retry_after = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            retry_after = float(value)
    if length:
        await reader.readexactly(length)
    return status, retry_after
