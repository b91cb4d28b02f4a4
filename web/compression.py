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
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import MutableMapping

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
