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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

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


class JsonErrorsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` answering its parse errors with the JSON error body, with
    ``TCP_NODELAY`` on."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Its family may say AF_UNIX for a TCP socket (see above): ask the kernel instead.
            with contextlib.suppress(OSError):  # a real Unix socket has no Nagle to turn off
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

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
