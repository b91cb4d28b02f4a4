"""API documentation routes: ``GET /openapi.json`` and a Swagger UI page at ``GET /docs``.

The spec is built from the config in force (``web.openapi.build_spec``), once per config
object: a reload serves the new spec on the next request. The page and its assets are served
from the ``swagger-ui-bundle-v2`` package's copy of swagger-ui's dist, never from a CDN, so the
page works offline and loads nothing from third parties.

Like FastAPI's, these routes are public even when ``auth.apiKeys`` is set (``web.admission``
exempts ``PUBLIC_PATHS``): the spec names the configured namespaces and recommenders but no keys
and no data, and the page's "Authorize" button takes a key for "Try it out".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from swagger_ui_bundle import swagger_ui_path

from schemas.config import Config
from web.openapi import build_spec

SPEC_PATH = "/openapi.json"
DOCS_PATH = "/docs"
# The only files of the dist the page needs (the standalone preset's top bar is left out).
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
PUBLIC_PATHS = frozenset({SPEC_PATH, DOCS_PATH, *(f"{DOCS_PATH}/{name}" for name in ASSETS)})
# The assets change only with the package version, which is part of nothing in their URL:
# a day keeps repeat visits fast without pinning an old copy for long after an upgrade.
ASSET_CACHE = "public, max-age=86400"

# Relative URLs, so the page also works behind a proxy that mounts the service under a prefix.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>p13n API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
</script>
</body>
</html>
"""


class SpecEndpoint:
    """``GET /openapi.json``: the spec of the current config, rendered once per config object."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._rendered: tuple[Config, bytes] | None = None

    def body(self) -> bytes:
        config = self._config()
        rendered = self._rendered
        if rendered is None or rendered[0] is not config:
            # A race between two requests after a reload renders twice; both results are equal.
            rendered = (config, json.dumps(build_spec(config)).encode())
            self._rendered = rendered
        return rendered[1]

    async def endpoint(self, request: Request) -> Response:
        return Response(self.body(), media_type="application/json")


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_PAGE)


async def docs_asset(request: Request) -> Response:
    name = request.path_params["asset"]
    media_type = ASSETS.get(name)
    if media_type is None:  # the error handler gives it the usual JSON error body
        raise HTTPException(404)
    path = Path(str(swagger_ui_path)) / name
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": ASSET_CACHE})


def docs_routes(config: Callable[[], Config]) -> list[BaseRoute]:
    """The routes to add to the app: the spec, the page, and the page's assets."""
    spec = SpecEndpoint(config)
    return [
        Route(SPEC_PATH, spec.endpoint, methods=["GET"]),
        Route(DOCS_PATH, docs_page, methods=["GET"]),
        Route(DOCS_PATH + "/{asset}", docs_asset, methods=["GET"]),
    ]
