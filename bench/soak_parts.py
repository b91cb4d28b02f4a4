"""Pieces of ``bench.soak`` that run beside the system under test.

* ``Receiver``: the ``http`` target's endpoint; records the monotonic arrival time of every
  event id it is sent, duplicates included, in arrival order.
* ``fakes_process``: a child process (spawn) hosting our fake Personalize and the receiver, so
  neither shares the bench's GIL; driven over a pipe (faults on/off, the final report).
* ``TcpProxy``: a byte pump in front of kinesis-local. ``cut()`` aborts every connection and
  stops listening, so the emulator, with no client left, stops at once on SIGTERM and persists
  what it holds; ``reopen(port)`` listens again on the same port towards a new emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrivals: list[tuple[str, float]] = []
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def arrivals(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._arrivals)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _record(self, ids: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._arrivals.extend((event_id, now) for event_id in ids)
            self.requests += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                documents = json.loads(body)
                receiver._record(
                    [e["eventId"] for doc in documents for e in doc["body"]["eventList"]]
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        return Handler


def fakes_process(conn: Any, log_path: str) -> None:
    """Child process: fake Personalize and the receiver until told ``stop``.

    Commands: ``("faults", {...})`` → ``set_faults``; ``("report", None)`` → a dict with each
    target's arrivals ``[(event_id, monotonic)]`` and the Personalize calls by error code."""
    import sys

    from tests.fixtures.fake_personalize import FakePersonalize

    # A consumer killed mid-call leaves a reset connection, which the servers report here.
    sys.stderr = open(log_path, "a")  # noqa: SIM115 - open for the life of the process
    fake = FakePersonalize()
    receiver = Receiver()
    conn.send({"personalize": fake.endpoint, "tracking_id": fake.tracking_id, "hook": receiver.url})
    try:
        while True:
            command, argument = conn.recv()
            if command == "faults":
                fake.set_faults(**argument)
                conn.send(None)
            elif command == "report":
                events = fake.events()  # first: every event's call is then among the calls
                calls = fake.calls()
                at = {call.number: call.at for call in calls}
                conn.send(
                    {
                        "personalize": [(e.event_id, at[e.call]) for e in events],
                        "personalize_calls": dict(Counter(c.error or "ok" for c in calls)),
                        # Calls refused for another reason than throttling, for diagnosis.
                        "personalize_refused": [
                            json.dumps(dict(c.request))[:600]
                            for c in calls
                            if c.error not in (None, "ThrottlingException")
                        ][:5],
                        "hook": receiver.arrivals(),
                        "hook_requests": receiver.requests,
                    }
                )
            else:
                break
    finally:
        receiver.close()
        fake.close()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream``, from a thread of its own."""

    def __init__(self, port: int, upstream: int) -> None:
        self.port = port
        self.upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        """Stop listening (connections are refused) and abort every open connection."""
        self._call(self._cut())

    def reopen(self, upstream: int) -> None:
        self.upstream = upstream
        self._call(self._listen())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client.transport.abort()
            return
        self._writers.update((client, upstream))
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream), self._pump(upstream_reader, client)
            )
        finally:
            for writer in (client, upstream):
                self._writers.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            return  # one side went away (a fault the soak injects): the pump ends, as at EOF
        finally:
            writer.transport.abort()
