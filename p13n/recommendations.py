"""The recommendation routes: Starlette requests turned into ``query.service.Request``s.

Paths, parameters and bodies are the sample project's. Only this module knows Starlette on the
query path; ``query/`` sees plain values and answers with bytes and headers.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ingest.endpoint import read_body
from query.service import QueryService
from query.service import Request as QueryRequest
from schemas.config import Config
from schemas.errors import UnsupportedMediaType

PATHS = (
    ("recommend-items", "/recommend-items/{namespace}/{recommender}/{userId}", "GET"),
    ("related-items", "/related-items/{namespace}/{recommender}/{itemId}", "GET"),
    ("rerank-items", "/rerank-items/{namespace}/{recommender}/{userId}/{itemIds}", "GET"),
    ("rerank-items", "/rerank-items/{namespace}/{recommender}/{userId}", "POST"),
)


def routes(service: QueryService, config: Callable[[], Config]) -> list[BaseRoute]:
    def endpoint(action: str) -> Callable[[Request], object]:
        async def handle(request: Request) -> Response:
            headers = {
                k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]
            }
            body = None
            if request.method == "POST":
                media = headers.get("content-type", "application/json").split(";", 1)[0]
                if media.strip().lower() not in ("application/json", ""):
                    raise UnsupportedMediaType(
                        f"Content-Type must be application/json, not '{media}'"
                    )
                body = await read_body(
                    request, headers.get("content-length"), config().max_body_bytes
                )
            path = request.path_params
            answer = await service.serve(
                QueryRequest(
                    action=action,
                    namespace=path["namespace"],
                    recommender=path["recommender"],
                    path=path,
                    params=dict(request.query_params),
                    headers=headers,
                    url_path=request.url.path,
                    body=body,
                )
            )
            return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))

        return handle

    return [
        Route(path, endpoint(action), methods=[method])  # type: ignore[arg-type]
        for action, path, method in PATHS
    ]
