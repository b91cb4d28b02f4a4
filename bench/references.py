"""Reference servers for the benchmarks, on the same stack as p13n (uvicorn + Starlette).

* ``bare``: answers 202 without doing anything — the ceiling of the server stack itself.
* ``sample``: the sample project's way of handling an event: one synchronous Kinesis PutRecord
  of the request's JSON per request, answered when it returns.

    python -m bench.references bare --port 9001
    python -m bench.references sample --port 9002 --stream NAME --endpoint-url URL
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def bare_app() -> Starlette:
    async def accept(request: Request) -> Response:
        await request.body()
        return JSONResponse({"accepted": 1}, status_code=202)

    return Starlette(routes=[Route("/events/{namespace}", accept, methods=["POST"])])


def sample_app(stream: str, endpoint_url: str, region: str) -> Starlette:
    from streams.aws import client

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
    parser.add_argument("kind", choices=["bare", "sample"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    app = (
        bare_app()
        if args.kind == "bare"
        else sample_app(args.stream, args.endpoint_url, args.region)
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
