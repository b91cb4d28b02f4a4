"""A small HTTP/1.1 client for one origin: keep-alive connections, GET only, bounded answers.

Why a client of its own beside httpx (p13n's HTTP client everywhere else): on the query path a
recommender call is most of the CPU p13n spends on a cache miss, and the goal is a miss
overhead p99 <= 3 ms at 200 req/s (``bench.query``). Measured with each client, same machine,
same code otherwise (2 shared cores, noisy; ratios are what count):

=====================================  ==============  ====================
``bench.query`` (6 s per scenario)     this client     ``httpx.AsyncClient``
=====================================  ==============  ====================
miss overhead at 200 req/s, p50        0.49 ms         1.60 ms
miss overhead at 200 req/s, p99        0.77 ms         9.76 ms (goal missed)
server CPU per miss                    0.49 ms         1.43 ms
misses/s, 50 closed-loop clients       3747            377
=====================================  ==============  ====================

(httpx with a keep-alive pool of 64, sniffio installed, the body streamed raw for the size
limit; both runs with TCP_NODELAY set on the service's accepted connections, without which
every keep-alive answer of ``p13n serve`` waits ~40 ms for a delayed ACK and swamps both.) aiohttp, which this replaced earlier, cost about 0.3 ms per call more than this
client: its general machinery (sessions, connectors, tracing, cookie jars, multidicts, URL
objects). Here a call is one ``asyncio.Protocol`` write and llhttp (``httptools``, the C parser
uvicorn serves with) reading the answer: chunked, ``content-length`` or close-delimited bodies
alike.

Contract:

- ``get(target)`` sends ``GET target`` with the pool's headers and returns the status, the
  headers (names lower-case; the last of repeated names) and the whole body.
- Connections are reused while the server keeps them alive; at most ``max_idle`` wait idle.
  A reused connection that fails before any byte of the answer (the server closed it while
  idle) is replaced and the request sent once more; a GET may be repeated.
- ``connect_timeout`` bounds opening a connection (TLS included), ``read_timeout`` the wait for
  each piece of the answer; either raises ``TimeoutError``. A failure to connect, a connection
  lost mid-answer or an answer llhttp cannot parse raises ``ConnectionError``; a body larger
  than ``max_body`` raises ``BodyTooLarge``. A connection is never reused after a failure or
  a cancelled call.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools


class BodyTooLarge(Exception):
    """The answer's body is larger than the pool accepts."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection; one request at a time. ``answer`` is set when a whole answer arrived."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout = 0.0
        self.lost = False
        self.reusable = False
        self._reset()

    def _reset(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.framed = False  # content-length or chunked: the parser sees the end itself
        self.headers_done = False
        self.received = False  # any byte of the current answer
        self.too_large = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._arm()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.too_large:
                self._fail(BodyTooLarge(f"answer larger than {self.max_body} bytes"))
            else:
                self._fail(ConnectionError(f"unparsable answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done and not self.framed and self.waiter and not self.waiter.done():
            self._complete(keep_alive=False)  # a close-delimited body ends with the connection
            return
        self._fail(ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self.headers[key] = value.decode("latin-1")
        if key in ("content-length", "transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self.too_large = True
            raise BodyTooLarge()  # stops the parser (it raises HttpParserCallbackError)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._complete(keep_alive=self.parser.should_keep_alive())

    # -- one exchange -------------------------------------------------------------------------

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.waiter is not None and not self.waiter.done():
            loop = self.waiter.get_loop()
            self.timer = loop.call_later(self.read_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._fail(TimeoutError("no answer in time"))

    def _complete(self, *, keep_alive: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
        waiter, self.waiter = self.waiter, None
        self.reusable = keep_alive and not self.lost
        if waiter is not None and not waiter.done():
            waiter.set_result(
                Answer(self.parser.get_status_code(), self.headers, b"".join(self.body))
            )

    def _fail(self, exc: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    async def exchange(self, request: bytes, read_timeout: float) -> Answer:
        assert self.transport is not None
        self._reset()
        self.reusable = False
        self.read_timeout = read_timeout
        self.waiter = asyncio.get_running_loop().create_future()
        self._arm()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class HttpPool:
    """Keep-alive connections to the origin of ``url`` (``http`` or ``https``)."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        max_body: int,
        max_idle: int = 64,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        lines = {"host": host if default_port else f"{host}:{self.port}"}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            lines["authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        lines.update({name.lower(): value for name, value in headers.items()})
        for name, value in lines.items():
            if any(c in name + value for c in "\r\n\0") or ":" in name:
                raise ValueError(f"header {name!r} cannot be sent")
        self._head = "".join(f"{name}: {value}\r\n" for name, value in lines.items()).encode(
            "latin-1"
        )
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_body = max_body
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self.closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self.max_body),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except OSError as exc:
            raise ConnectionError(f"cannot connect: {exc}") from exc
        return connection

    async def get(self, target: str) -> Answer:
        request = b"GET " + target.encode("ascii") + b" HTTP/1.1\r\n" + self._head + b"\r\n"
        while self._idle:
            connection = self._idle.pop()
            if connection.lost:
                continue
            try:
                return await self._exchange(connection, request)
            except ConnectionError:
                if connection.received:
                    raise
                # Closed by the server while idle: a fresh connection, the request once more.
                break
        return await self._exchange(await self._connect(), request)

    async def _exchange(self, connection: _Connection, request: bytes) -> Answer:
        done = False
        try:
            answer = await connection.exchange(request, self.read_timeout)
            done = True
            return answer
        finally:
            if done and connection.reusable and not self.closed and len(self._idle) < self.max_idle:
                self._idle.append(connection)
            else:
                connection.close()

    async def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
