"""`p13n dead-letters list` and `redrive` against the real service and an HTTP receiver."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from tests.fixtures.service import wait_until


class Receiver:
    """Answers 400 (a permanent refusal) until ``accept`` is set; records accepted event ids."""

    def __init__(self) -> None:
        self.accept = False
        self.received: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.accept:
                    for record in json.loads(body):
                        receiver.received.extend(e["eventId"] for e in record["body"]["eventList"])
                    self.send_response(200)
                else:
                    self.send_response(400)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def letters(service: Any) -> list[dict[str, Any]]:
    done = service.cli("dead-letters", "list", "--target", "hook")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_dead_letters_are_listed_then_redriven_once(service_factory):
    receiver = Receiver()
    try:
        service = service_factory(
            {
                "consumer": {"pollIntervalMs": 50},
                "namespaces": {
                    "shop": {
                        "eventTargets": [{"type": "http", "name": "hook", "url": receiver.url}]
                    }
                },
            }
        )
        with httpx.Client(base_url=service.url) as http:
            for n in range(5):
                body = {"sessionId": "s", "eventList": [{"eventType": "View", "eventId": f"e{n}"}]}
                assert http.post("/events/shop", json=body).status_code == 202

        wait_until(lambda: len(letters(service)) == 5, timeout=20)
        listed = letters(service)
        assert {entry["code"] for entry in listed} == {"HTTP400"}
        assert all(entry["attempts"] == 1 and not entry["redriven"] for entry in listed)
        assert all("data" not in entry and entry["bytes"] > 0 for entry in listed)
        assert receiver.received == []

        receiver.accept = True
        done = service.cli("dead-letters", "redrive", "--target", "hook")
        assert done.returncode == 0, done.stderr
        assert "5 letter(s) redriven: 5 delivered, 0 dead-lettered again" in done.stdout
        assert receiver.received == [f"e{n}" for n in range(5)]
        assert all(entry["redriven"] for entry in letters(service))

        again = service.cli("dead-letters", "redrive", "--target", "hook")
        assert "0 letter(s) redriven" in again.stdout
        assert receiver.received == [f"e{n}" for n in range(5)]  # nothing sent twice
    finally:
        receiver.close()
