"""The probes: ``GET /healthz`` (the process answers) and ``GET /readyz`` (``Readiness``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.errors import P13nError
from streams.base import StreamReader

READY_CACHE_SECONDS = 2.0


class Readiness:
    """``/readyz``: the stream answers (checked at most every couple of seconds), and how the
    consumer groups this process runs are doing.

    503 only when the stream does not answer: events are then refused. A consumer group that is
    paused (an operator error: AWS credentials, a placeholder in the config), restarting (its
    stream, checkpoints or store did not answer, or it crashed) or stopped makes
    the answer ``degraded`` with 200 — events are still taken and kept in the stream for it —
    and ``targets`` says which group and why.
    """

    def __init__(
        self,
        reader: Callable[[], StreamReader],
        consumers: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self._make_reader = reader
        self._consumers = consumers
        self._reader: StreamReader | None = None
        self._checked_at = -READY_CACHE_SECONDS
        self._problem: str | None = "not checked yet"

    def _check(self) -> None:
        try:
            if self._reader is None:
                self._reader = self._make_reader()
            self._reader.list_shards()
            self._problem = None
        except P13nError as exc:
            self._problem = exc.message

    async def endpoint(self, request: Request) -> Response:
        if time.monotonic() - self._checked_at >= READY_CACHE_SECONDS:
            await anyio.to_thread.run_sync(self._check)
            self._checked_at = time.monotonic()
        body: dict[str, Any] = {"status": "ready"}
        if self._problem is not None:
            body = {"status": "unavailable", "reason": self._problem}
        if self._consumers is not None:
            targets = self._consumers()
            body["targets"] = targets
            failing = sorted(
                group
                for group, h in targets.items()
                if h["state"] in ("paused", "restarting", "stopped")
            )
            if failing and self._problem is None:
                body["status"] = "degraded"
                body["reason"] = "consumer group(s) not delivering: " + ", ".join(failing)
        return JSONResponse(body, status_code=503 if self._problem is not None else 200)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})
