"""The recommendation routes: ASGI requests turned into ``query.service.Request``s.

Paths, parameters and bodies are the sample project's. Only this module knows Starlette on the
query path; ``query/`` sees plain values and answers with bytes and headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from urllib.parse import parse_qsl

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ingest.body import check_media_type
from query.service import QueryService
from query.service import Request as QueryRequest
from schemas.config import Config
from web.body import receive_body
from web.compression import MEMO_KEY

QUERY_MEMO_SIZE = 1024
PATHS = (
    ("recommend-items", "/recommend-items/{namespace}/{recommender}/{userId}", "GET"),
    ("related-items", "/related-items/{namespace}/{recommender}/{itemId}", "GET"),
    ("rerank-items", "/rerank-items/{namespace}/{recommender}/{userId}/{itemIds}", "GET"),
    ("rerank-items", "/rerank-items/{namespace}/{recommender}/{userId}", "POST"),
)


class _Endpoint:
    """One action's route as a plain ASGI app (an instance, so Starlette does not wrap it in a
    Request/Response handler): a cache hit costs little more than this translation, and
    building Request, URL, QueryParams and Response objects for it cost as much as the hit
    itself (measured in bench/query). Errors raised here still reach the app's exception
    handlers, as no response has started."""

    def __init__(self, action: str, service: QueryService, config: Callable[[], Config]) -> None:
        self.action = action
        self.service = service
        self.config = config
        # Parsed query strings by their raw bytes: most requests repeat a few ("numResults=25")
        # and parsing costs more than the lookup. Bounded; emptied when full.
        self._queries: dict[bytes, Mapping[str, str]] = {}

    def _params(self, raw: bytes) -> Mapping[str, str]:
        params = self._queries.get(raw)
        if params is None:
            # Last value wins for a repeated parameter, as with Starlette's QueryParams.
            params = MappingProxyType(
                dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
            )
            if len(self._queries) >= QUERY_MEMO_SIZE:
                self._queries.clear()
            self._queries[raw] = params
        return params

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = None
        if scope["method"] == "POST":
            check_media_type(headers.get("content-type"))
            body = await receive_body(
                receive, headers.get("content-length"), self.config().max_body_bytes
            )
        path = scope["path_params"]
        params = self._params(scope["query_string"])
        answer = await self.service.serve(
            QueryRequest(
                action=self.action,
                namespace=path["namespace"],
                recommender=path["recommender"],
                path=path,
                params=params,
                headers=headers,
                url_path=scope["path"],
                body=body,
                query_string=scope["query_string"],
            )
        )
        if answer.encodings is not None:
            scope[MEMO_KEY] = answer.encodings
        raw = [(b"content-length", str(len(answer.body)).encode())]
        raw += [(k.encode(), v.encode("latin-1")) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        await send({"type": "http.response.body", "body": answer.body})


def routes(service: QueryService, config: Callable[[], Config]) -> list[Route]:
    return [
        Route(path, _Endpoint(action, service, config), methods=[method])
        for action, path, method in PATHS
    ]
