"""``POST /events/{namespace}``: validate, encode, and answer 202 once the record is durable.

The answer is ``{"accepted": <events>, "recordId": <hex>}`` with ``Cache-Control: no-store``
(as the sample sent). A request with nothing in it (``{}``, empty lists) writes nothing and is
answered ``{"accepted": 0, "recordId": null}``: the sample answered it as a success too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import msgspec
from starlette.types import Receive, Scope, Send

from ingest.body import check_media_type, decode_body
from ingest.events import build_record
from schemas.codec import INTERACTION, Codec
from schemas.config import Config
from schemas.records import without_partition_key
from streams.base import Entry
from streams.producer import Producer
from web.body import receive_body


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A plain ASGI app (an instance, so Starlette's route does not wrap it in a
        Request/Response handler) for a request its route matched (``scope["path_params"]``
        set). Errors are raised, not answered: the application's exception handlers map them
        to responses (``web.errors``, in one place)."""
        answer = await self._accept(scope["path_params"]["namespace"], scope["headers"], receive)
        await send(
            {"type": "http.response.start", "status": 202, "headers": _answer_headers(answer)}
        )
        await send({"type": "http.response.body", "body": answer})

    async def _accept(
        self, namespace_key: str, raw_headers: Iterable[tuple[bytes, bytes]], receive: Receive
    ) -> bytes:
        """Validate, encode and write one request; the JSON answer once it is durable."""
        config = self._config()
        namespace = config.namespace(namespace_key)
        # One plain dict of the headers: auto-context and the request context look up dozens
        # of names, and Starlette's Headers scans its list on every lookup.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        check_media_type(headers.get("content-type"))
        raw = await receive_body(receive, headers.get("content-length"), config.max_body_bytes)
        body = decode_body(raw)
        accepted = build_record(body, namespace, config, headers, self._clock())
        if accepted.record is None:
            return _NOTHING
        data = self._codec.encode(
            INTERACTION, without_partition_key(dict(accepted.record), accepted.partition_key)
        )
        await self._producer.put(Entry(accepted.partition_key, data))
        answer = {"accepted": accepted.events, "recordId": accepted.record["recordId"].hex()}
        return msgspec.json.encode(answer)


_NOTHING = msgspec.json.encode({"accepted": 0, "recordId": None})


def _answer_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    # What Starlette's Response(media_type="application/json", headers={"cache-control":
    # "no-store"}) sends, in its order (the endpoint was one once).
    return [
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]
