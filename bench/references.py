"""Reference servers for the benchmarks.

On the same stack as p13n (uvicorn + Starlette):

* ``bare``: answers without doing anything — the ceiling of the server stack itself. POST
  ``/events/{ns}`` answers 202; GET ``/recommend-items/{ns}/{recommender}/{userId}`` answers a
  fixed body as large as p13n's decorated 25-item answer (``DECORATED_BODY``). It runs on the
  protocol ``p13n serve`` runs (``web.protocol``: each answer written in one piece), so that
  what p13n's own protocol saves counts for the ceiling too.
* ``bare-uvicorn``: the same app on uvicorn's own protocol (head and body as two writes): the
  bare endpoint of the stops before ``web.protocol`` wrote answers in one piece.
* ``sample``: the sample project's way of handling an event: one synchronous Kinesis PutRecord
  of the request's JSON per request, answered when it returns.

Not on that stack, on purpose:

* ``recommender``: a zero-latency recommender for the query benchmark — a raw asyncio protocol
  (uvloop when installed) that answers every request with the same 25 items
  (``RECOMMENDER_BODY``), keep-alive, no routing and no parsing beyond finding the request's end.

    python -m bench.references bare --port 9001
    python -m bench.references sample --port 9002 --stream NAME --endpoint-url URL
    python -m bench.references recommender --port 9003
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any, cast

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ITEM_COUNT = 25


def item_ids() -> list[str]:
    return [f"item-{n}" for n in range(1, ITEM_COUNT + 1)]


def item_metadata(item_id: str) -> dict[str, Any]:
    """The catalog row of one benchmark item (what decoration adds to it)."""
    n = int(item_id.rpartition("-")[2])
    return {
        "name": f"Everyday product number {n}",
        "category": ("apparel", "footwear", "outdoors", "kitchen", "books")[n % 5],
        "price": round(9.99 + n * 1.5, 2),
        "imageUrl": f"https://cdn.example.com/items/{item_id}.jpg",
    }


def _items() -> list[dict[str, Any]]:
    return [{"itemId": i, "score": round(1 / (k + 1), 6)} for k, i in enumerate(item_ids())]


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


RECOMMENDER_BODY = _json({"itemList": _items()})
DECORATED_BODY = _json(
    {"itemList": [{**item, "metadata": item_metadata(item["itemId"])} for item in _items()]}
)


def bare_app() -> Starlette:
    async def accept(request: Request) -> Response:
        await request.body()
        return JSONResponse({"accepted": 1}, status_code=202)

    async def recommend(request: Request) -> Response:
        return Response(DECORATED_BODY, media_type="application/json")

    return Starlette(
        routes=[
            Route("/events/{namespace}", accept, methods=["POST"]),
            Route("/recommend-items/{namespace}/{recommender}/{userId}", recommend),
        ]
    )


class _Recommender(asyncio.Protocol):
    """Answers each request as soon as its head (and body, if it has one) has arrived."""

    ANSWER = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(RECOMMENDER_BODY)}\r\n\r\n".encode()
        + RECOMMENDER_BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            start = head.find(b"content-length:")
            length = int(head[start + 15 :].split(b"\r\n", 1)[0]) if start >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self.ANSWER)


async def serve_recommender(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        _Recommender, "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def run_recommender(port: int) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_recommender(port))
    else:
        uvloop.run(serve_recommender(port))


def sample_app(stream: str, endpoint_url: str, region: str) -> Starlette:
    from aws.clients import client

    kinesis = client("kinesis", region=region, endpoint_url=endpoint_url, max_attempts=3)

    async def body_of(request: Request) -> bytes:
        return await request.body()

    def put(namespace: str, body: bytes) -> None:
        payload = json.loads(body)
        record = {"namespace": namespace, "path": f"/events/{namespace}", "body": payload}
        kinesis.put_record(
            StreamName=stream, Data=json.dumps(record).encode(), PartitionKey=payload["sessionId"]
        )

    async def accept(request: Request) -> Response:
        import anyio.to_thread

        body = await body_of(request)
        await anyio.to_thread.run_sync(put, request.path_params["namespace"], body)
        return JSONResponse({"accepted": 1}, status_code=202)

    return Starlette(routes=[Route("/events/{namespace}", accept, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["bare", "bare-uvicorn", "sample", "recommender"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    if args.kind == "recommender":
        run_recommender(args.port)
        return
    if args.kind == "bare":
        from web.protocol import JsonErrorsProtocol

        uvicorn.run(
            bare_app(),
            host="127.0.0.1",
            port=args.port,
            http=JsonErrorsProtocol,
            log_level="warning",
            access_log=False,
        )
        return
    app = (
        bare_app()
        if args.kind == "bare-uvicorn"
        else sample_app(args.stream, args.endpoint_url, args.region)
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
