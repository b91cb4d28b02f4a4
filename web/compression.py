"""gzip of answers for clients that accept it (the ``compression`` config).

An answer is compressed when the request's ``Accept-Encoding`` accepts gzip, the answer's
``Content-Length`` is at least ``minimumBytes``, its type is text-like (JSON, ``text/*``,
JavaScript, SVG), it has no ``Content-Encoding`` yet, and its body comes in one piece (a streamed
file is sent as it is). A compressed answer carries ``Vary: Accept-Encoding``, so a shared cache
never gives it to a client that did not ask for gzip (as Starlette's GZipMiddleware does; the
plain form is good for every client). Answers to clients that do not accept gzip are not looked
at at all: that path costs nothing.

A body that is sent many times (a cached recommendation) brings a memo (``MEMO_KEY`` in the
ASGI scope: a dict that lives as long as the cached entry), so a cache hit is compressed once,
not on every request.

``Gzip`` is the layer that does it, outside every other header-adding layer (so the ``Vary``
it adds comes after CORS's, as it always has) and outside the application's 500.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Awaitable, Callable, MutableMapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.config import Config

# Where an endpoint leaves the memo of its body's encodings for the middleware.
MEMO_KEY = "p13n.encodings"
_GZIP_WBITS = 31  # zlib's gzip container
_TEXT_TYPES = (b"application/json", b"text/", b"application/javascript", b"image/svg+xml")


@functools.lru_cache(maxsize=64)  # clients send a handful of distinct values, on every request
def accepts_gzip(value: bytes) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip (``gzip`` or ``*``, not with q=0)."""
    for part in value.lower().split(b","):
        coding, _, params = part.partition(b";")
        if coding.strip() not in (b"gzip", b"x-gzip", b"*"):
            continue
        quality = params.strip()
        if quality.startswith(b"q="):
            try:
                if float(quality[2:]) <= 0:
                    continue
            except ValueError:
                continue
        return True
    return False


def compressible(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media.startswith(_TEXT_TYPES) or media.endswith(b"+json")


def gzip(body: bytes, level: int, memo: MutableMapping[object, bytes] | None = None) -> bytes:
    """``body`` gzipped at ``level`` (remembered in ``memo`` when one is given)."""
    key = ("gzip", level)
    if memo is not None:
        found = memo.get(key)
        if found is not None:
            return found
    packer = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    packed = packer.compress(body) + packer.flush()
    if memo is not None:
        memo[key] = packed
    return packed


_GZIPPED = ((b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding"))


class Gzip:
    def __init__(self, app: ASGIApp, config: Callable[[], Config]) -> None:
        self.app = app
        self.config = config

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # not for HEAD: its answer has the headers of a body it does not carry
        if scope["type"] != "http" or scope["method"] == "HEAD":
            return self.app(scope, receive, send)
        compression = self.config().compression
        accepted = False
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accepted = compression.enabled and accepts_gzip(value)
        if not accepted:
            return self.app(scope, receive, send)
        held: Message | None = None  # an answer start waiting for its body to be compressed
        length_at = 0  # where its content-length is

        async def gzip_send(message: Message) -> None:
            nonlocal held, length_at
            if message["type"] == "http.response.start":
                headers = message["headers"] = list(message.get("headers", ()))
                found = _worth_gzip(headers, compression.minimum_bytes)
                if found is not None:
                    held, length_at = message, found
                    return
            elif held is not None:
                start, held = held, None
                body = message.get("body", b"")
                if not message.get("more_body", False):
                    packed = gzip(body, compression.level, scope.get(MEMO_KEY))
                    headers = start["headers"]
                    headers[length_at] = (b"content-length", str(len(packed)).encode())
                    headers += _GZIPPED
                    message["body"] = packed
                await send(start)  # streamed: sent as it is
            await send(message)

        return self.app(scope, receive, gzip_send)


def _worth_gzip(headers: list[tuple[bytes, bytes]], minimum: int) -> int | None:
    """Where the ``content-length`` is in ``headers``, if the answer they start is to be
    gzipped: text-like, not encoded yet, and of a known length of at least ``minimum`` bytes;
    else None."""
    content_type = length = None
    length_at = 0
    for index, (name, value) in enumerate(headers):
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length, length_at = value, index
        elif name == b"content-encoding":
            return None
    if (
        length is not None
        and length.isdigit()
        and int(length) >= minimum
        and compressible(content_type)
    ):
        return length_at
    return None
