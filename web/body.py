"""Reading a request body from ASGI ``receive``, refused with 413 as soon as it is known to be
too large (its declared ``Content-Length`` or the bytes received so far)."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from schemas.errors import PayloadTooLarge


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    while True:  # ASGI messages straight from the server: cheaper than request.stream()
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
