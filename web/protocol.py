"""The HTTP/1.1 protocol ``p13n serve`` runs: uvicorn's httptools protocol, with the error body
of every other refusal for the requests it refuses before the application sees them.

uvicorn answers a request its parser rejects with ``400 text/plain "Invalid HTTP request
received."`` and closes the connection. The most common such request is a URL past the 65,535
bytes httptools' URL parser takes (a ``context`` or ``filterValues`` grown too large, a long
rerank list in the path): it gets ``414 URITooLong`` here, and any other malformed request
``400 InvalidHTTPRequest``, both as ``{"type": "Validation", "code", "message"}`` JSON, so a
client handles them like the rest. The connection is still closed: after a parse error the
bytes on it cannot be trusted to start a request.

It also turns Nagle's algorithm off on every connection (``TCP_NODELAY``). asyncio does that by
itself only for sockets it knows to be TCP, and ``p13n serve`` hands uvicorn its listening
socket as a file descriptor, which uvicorn wraps as ``AF_UNIX``: an answer written in two parts
(headers, then body) then waited for the client's delayed ACK of the first, about 40 ms on
every request (``bench.query`` and ``bench.ingest`` showed a 42-48 ms floor even for
``/healthz``).

And it writes each answer in one piece: uvicorn hands the transport the status line and headers,
then the body, as two writes — two system calls on the server and, with Nagle off, two TCP
segments for the client to take in. ``Coalescing`` joins the writes made while one callback of
the event loop runs (an endpoint sending its start and body messages without waiting in
between) into one. On ``bench.ingest`` the service then spent 5-7% less CPU per event and the
load generator a fifth to a quarter less (ratios within one run on a shared 2-core machine);
with ``web.stack``'s router change, ``bench.query``'s cache hits went from 63% to 93% of a bare
endpoint on uvicorn's own protocol. The benchmarks' bare endpoint now runs on this protocol too
(``bench.references``), so what it saves raises the ceiling they compare with as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# httptools.parse_url keeps offsets in 16 bits.
MAX_URL_BYTES = 65535


def refusal(url_bytes: int) -> tuple[int, bytes]:
    """The status and JSON body for a request the parser refused, its URL this long so far."""
    if url_bytes > MAX_URL_BYTES:
        status, code = 414, "URITooLong"
        message = f"The URL is longer than {MAX_URL_BYTES} bytes"
    else:
        status, code = 400, "InvalidHTTPRequest"
        message = "The request is not valid HTTP/1.1"
    body = {"type": "Validation", "code": code, "message": message}
    return status, json.dumps(body).encode()


class Coalescing(asyncio.Transport):
    """A transport whose writes during one callback of the event loop reach the transport
    underneath as one write, just after that callback returns (``call_soon``).

    Bytes keep their order; ``close`` and ``write_eof`` write what is held first; ``abort``
    drops it, as it drops the transport's own buffer; bytes held when the connection is already
    closing are dropped as the transport would drop them. Everything else is the underlying
    transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._held_bytes += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand what is held to the transport now (one write)."""
        held = self._held
        if not held:
            return
        self._held = []
        self._held_bytes = 0
        if self._transport.is_closing():
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._held_bytes = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._held_bytes + self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class JsonErrorsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` answering its parse errors with the JSON error body, with
    ``TCP_NODELAY`` on and each answer written in one piece (``Coalescing``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Its family may say AF_UNIX for a TCP socket (see above): ask the kernel instead.
            with contextlib.suppress(OSError):  # a real Unix socket has no Nagle to turn off
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(Coalescing(transport, self.loop))

    def send_400_response(self, msg: str) -> None:
        status, body = refusal(len(getattr(self, "url", b"")))
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
