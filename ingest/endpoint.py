"""``POST /events/{namespace}``: validate, encode, and answer 202 once the record is durable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ingest.body import decode_body
from ingest.events import build_record
from schemas.codec import INTERACTION, Codec
from schemas.config import Config
from schemas.errors import PayloadTooLarge, UnsupportedMediaType
from schemas.records import without_partition_key
from streams.base import Entry
from streams.producer import Producer


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EventsEndpoint:
    def __init__(
        self,
        config: Callable[[], Config],
        producer: Producer,
        codec: Codec,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._config = config
        self._producer = producer
        self._codec = codec
        self._clock = clock

    async def post(self, request: Request) -> Response:
        config = self._config()
        namespace = config.namespace(request.path_params["namespace"])
        # One plain dict of the headers: auto-context and the request context look up dozens
        # of names, and Starlette's Headers scans its list on every lookup.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
        _check_content_type(headers.get("content-type"))
        raw = await read_body(request, headers.get("content-length"), config.max_body_bytes)
        body = decode_body(raw)
        accepted = build_record(body, namespace, config, headers, self._clock())
        data = self._codec.encode(
            INTERACTION, without_partition_key(dict(accepted.record), accepted.partition_key)
        )
        await self._producer.put(Entry(accepted.partition_key, data))
        answer = {"accepted": accepted.events, "recordId": accepted.record["recordId"].hex()}
        return Response(msgspec.json.encode(answer), status_code=202, media_type="application/json")


def _check_content_type(value: str | None) -> None:
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not '{media or 'missing'}'"
        )


async def read_body(request: Request, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    while True:  # ASGI messages straight from the server: cheaper than request.stream()
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
