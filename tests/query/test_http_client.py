"""The query path's HTTP client against a raw server on a real socket: every body framing,
keep-alive reuse, a connection the server closed while idle, limits, timeouts, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from query.resolvers.http_client import BodyTooLarge, HttpPool

# A handler gets each request's head and answers with raw bytes (or b"" to answer nothing);
# it may close the connection after answering.
Handler = Callable[[bytes, int], Awaitable[tuple[bytes, bool]]]


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                answer, close = await self.handler(head, number)
                if answer:
                    writer.write(answer)
                    await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client closed the connection: this one is over
        finally:
            writer.close()


def run(handler: Handler, body: Callable[[HttpPool, RawServer], Awaitable[object]], **pool_args):
    async def main() -> object:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = HttpPool(
            f"http://127.0.0.1:{port}",
            {"accept": "application/json"},
            connect_timeout=pool_args.get("connect_timeout", 2.0),
            read_timeout=pool_args.get("read_timeout", 2.0),
            max_body=pool_args.get("max_body", 1000),
        )
        try:
            return await body(pool, raw)
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{h}\r\n" for h in headers)
    return head.encode() + b"\r\n" + body


async def fixed(head: bytes, number: int) -> tuple[bytes, bool]:
    return answer(b'{"a":1}', "content-length: 7", "x-Thing: one", "x-thing: two"), False


def test_requests_reuse_one_connection_and_carry_the_pool_headers() -> None:
    async def body(pool: HttpPool, raw: RawServer) -> object:
        answers = [await pool.get(f"/recs/u{n}?n=3") for n in range(3)]
        assert [a.body for a in answers] == [b'{"a":1}'] * 3
        assert answers[0].status == 200 and answers[0].headers["x-thing"] == "two"
        assert raw.connections == 1
        first = raw.heads[0].decode()
        assert first.startswith("GET /recs/u0?n=3 HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{pool.port}\r\n" in first and "accept: application/json" in first
        return None

    run(fixed, body)


def test_chunked_and_close_delimited_bodies() -> None:
    async def handler(head: bytes, number: int) -> tuple[bytes, bool]:
        if b"chunked" in head:
            chunks = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
            return answer(chunks, "transfer-encoding: chunked"), False
        return answer(b"until the end"), True  # no length: the body ends with the connection

    async def body(pool: HttpPool, raw: RawServer) -> object:
        assert (await pool.get("/chunked")).body == b"abcdefg"
        assert (await pool.get("/closed")).body == b"until the end"
        assert (await pool.get("/chunked")).body == b"abcdefg"  # a new connection
        assert raw.connections == 2
        return None

    run(handler, body)


def test_a_connection_closed_while_idle_is_replaced_and_the_request_sent_again() -> None:
    async def handler(head: bytes, number: int) -> tuple[bytes, bool]:
        # Answers once per connection, then closes it (as an idle timeout would).
        return answer(b"ok", "content-length: 2"), True

    async def body(pool: HttpPool, raw: RawServer) -> object:
        # Right after the answer the close may not have reached the client yet: the request
        # goes out on the dead connection and is sent again on a new one.
        assert (await pool.get("/one")).body == b"ok"
        assert (await pool.get("/two")).body == b"ok"
        # Once the close has arrived, the dead connection is skipped.
        await until(lambda: all(c.lost for c in pool._idle))
        assert (await pool.get("/three")).body == b"ok"
        assert raw.connections == 3
        return None

    run(handler, body)


def test_a_connection_lost_mid_answer_is_an_error_not_a_retry() -> None:
    async def handler(head: bytes, number: int) -> tuple[bytes, bool]:
        return answer(b"par", "content-length: 10"), True

    async def body(pool: HttpPool, raw: RawServer) -> object:
        with pytest.raises(ConnectionError):
            await pool.get("/x")
        assert raw.connections == 1
        return None

    run(handler, body)


def test_a_body_over_the_limit_is_refused_and_the_connection_dropped() -> None:
    async def handler(head: bytes, number: int) -> tuple[bytes, bool]:
        return answer(b"x" * 5000, "content-length: 5000"), False

    async def body(pool: HttpPool, raw: RawServer) -> object:
        with pytest.raises(BodyTooLarge):
            await pool.get("/big")
        assert pool._idle == []
        return None

    run(handler, body, max_body=1000)


def test_a_silent_server_times_out_and_a_cancelled_call_leaves_no_connection() -> None:
    async def silent(head: bytes, number: int) -> tuple[bytes, bool]:
        return b"", False

    async def body(pool: HttpPool, raw: RawServer) -> object:
        with pytest.raises(TimeoutError):
            await pool.get("/slow")
        task = asyncio.ensure_future(pool.get("/slow"))
        await until(lambda: len(raw.heads) == 2)  # the request is out, its answer awaited
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool._idle == []
        return None

    run(silent, body, read_timeout=0.2)


def test_an_unparsable_answer_is_a_connection_error() -> None:
    async def garbage(head: bytes, number: int) -> tuple[bytes, bool]:
        return b"NOT HTTP AT ALL\r\n\r\n", False

    async def body(pool: HttpPool, raw: RawServer) -> object:
        with pytest.raises(ConnectionError):
            await pool.get("/x")
        return None

    run(garbage, body)


@pytest.mark.parametrize(
    "headers", [{"x-a": "one\r\nx-injected: yes"}, {"bad:name": "v"}, {"x-b": "nul\0"}]
)
def test_headers_that_cannot_be_sent_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        HttpPool(
            "http://127.0.0.1:9/",
            headers,
            connect_timeout=1,
            read_timeout=1,
            max_body=10,
        )


def test_nothing_listening_is_a_connection_error() -> None:
    async def main() -> None:
        pool = HttpPool("http://127.0.0.1:9/", {}, connect_timeout=1, read_timeout=1, max_body=10)
        with pytest.raises(ConnectionError):
            await pool.get("/")

    asyncio.run(main())
