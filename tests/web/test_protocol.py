"""Requests refused before the application sees them, and unknown routes, get the JSON error
body too: the service started as a process, real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tests.fixtures.service import Service
from web.protocol import MAX_URL_BYTES, Coalescing

ERROR_KEYS = {"type", "code", "message"}


def raw_exchange(service: Service, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as bytes; the status, headers and body of the answer (read to EOF)."""
    where = urlsplit(service.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_an_over_long_url_is_a_json_414(service_factory: Callable[..., Service]) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    context = "%7B%22k%22%3A%22" + "v" * (MAX_URL_BYTES + 10) + "%22%7D"  # {"k":"vvv..."}
    url = f"/recommend-items/demo/for-you/u1?context={context}"
    status, headers, body = raw_exchange(service, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 414
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    document = json.loads(body)
    assert set(document) == ERROR_KEYS
    assert (document["type"], document["code"]) == ("Validation", "URITooLong")
    # Just under the parser's limit, the application answers as usual (here: the context is
    # valid JSON and accepted).
    fits = "/recommend-items/demo/for-you/u1?numResults=2&pad=" + "p" * (MAX_URL_BYTES - 200)
    with service.client() as client:
        reply = client.get(fits)
    assert reply.status_code == 200, reply.text


def test_a_malformed_request_is_a_json_400(service_factory: Callable[..., Service]) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    status, headers, body = raw_exchange(service, b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert (document["type"], document["code"]) == ("Validation", "InvalidHTTPRequest")


def test_unknown_routes_and_methods_get_the_json_body(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory(extra_args=("--no-consumers",))
    with service.client() as client:
        missing: Any = client.get("/no/such/route")
        wrong = client.delete("/events/demo")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json() == {"type": "Validation", "code": "NotFound", "message": "No such route"}
    assert wrong.status_code == 405
    assert (wrong.json()["type"], wrong.json()["code"]) == ("Validation", "MethodNotAllowed")


class _Transport:
    """What ``connection_made`` reads of a transport, around a real accepted TCP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self.sock
        if name in ("sockname", "peername"):
            return ("127.0.0.1", 1)
        return default


def test_connections_have_nagle_off_even_on_a_listening_socket_given_as_fd() -> None:
    """uvicorn wraps a listening socket given as a descriptor (``p13n serve --port``) as
    AF_UNIX, so asyncio leaves Nagle on; the protocol turns it off on each connection."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from web.protocol import JsonErrorsProtocol

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        # As uvicorn sees a descriptor (config.fd): the family says AF_UNIX.
        wrapped = socket.fromfd(accepted.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert wrapped.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            loop = asyncio.new_event_loop()
            try:
                config = Config(app=None, http=JsonErrorsProtocol)  # type: ignore[arg-type]
                config.load()
                protocol = JsonErrorsProtocol(config, ServerState(), config.lifespan_class, loop)
                protocol.connection_made(_Transport(wrapped))  # type: ignore[arg-type]
            finally:
                loop.close()
            assert wrapped.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            for sock in (wrapped, accepted, client):
                sock.close()


class _RecordingTransport(asyncio.Transport):
    """The transport under ``Coalescing``: records each write it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_made_in_one_callback_reach_the_transport_as_one_write() -> None:
    loop = asyncio.new_event_loop()
    try:
        under = _RecordingTransport()
        transport = Coalescing(under, loop)

        def answer() -> None:
            transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
            transport.write(b"{}")
            assert under.writes == []  # held until the callback returns
            assert transport.get_write_buffer_size() == 47

        loop.call_soon(answer)
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.run_until_complete(asyncio.sleep(0))  # the flush queued by the first write
        assert under.writes == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]
        assert transport.get_write_buffer_size() == 0

        # The next callback's writes are a write of their own.
        loop.call_soon(transport.write, b"next")
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(0))
        assert under.writes[1:] == [b"next"]
    finally:
        loop.close()


def test_close_writes_what_is_held_first_and_abort_drops_it() -> None:
    loop = asyncio.new_event_loop()
    try:
        closed = _RecordingTransport()
        transport = Coalescing(closed, loop)
        transport.write(b"last answer")
        transport.close()
        assert closed.writes == [b"last answer"]
        assert closed.closed

        aborted = _RecordingTransport()
        transport = Coalescing(aborted, loop)
        transport.write(b"never sent")
        transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
        assert aborted.writes == []
        assert aborted.aborted

        # Bytes held when the connection is already closing are dropped, not written.
        gone = _RecordingTransport()
        transport = Coalescing(gone, loop)
        transport.write(b"too late")
        gone.closed = True
        loop.run_until_complete(asyncio.sleep(0))
        assert gone.writes == []
    finally:
        loop.close()


def test_pipelined_requests_are_answered_whole_and_in_order(
    service_factory: Callable[..., Service],
) -> None:
    """Three requests in one segment on a keep-alive connection: three answers, in order,
    each complete (the coalesced writes of one answer never mix with the next's)."""
    service = service_factory(extra_args=("--no-consumers",))
    body = json.dumps(
        {"sessionId": "pipe", "userId": "u1", "eventList": [{"eventType": "View", "itemId": "i1"}]}
    ).encode()
    post = (
        b"POST /events/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    where = urlsplit(service.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(post + post + last)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    stream = b"".join(chunks)
    answers = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        answers.append((int(lines[0].split()[1]), json.loads(rest[:length])))
        stream = rest[length:]
    assert [status for status, _ in answers] == [202, 202, 200]
    first, second = answers[0][1], answers[1][1]
    assert first["accepted"] == second["accepted"] == 1
    assert first["recordId"] != second["recordId"]
