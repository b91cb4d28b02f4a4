"""Cross-origin resource sharing for browser pages on other origins (the ``cors`` config).

Which paths: every API route (events, recommendations, the OpenAPI document) — all but
``NO_CORS_PATHS`` (health, readiness, metrics, the docs page and its assets, which are read
from the service's own origin or by machines).

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered
here, before API keys are checked — browsers never send credentials or custom headers with
it: 204 with the allowed origin, methods, headers and ``Access-Control-Max-Age`` when the origin
is allowed; 403 (``Forbidden``, the usual JSON error body) when it is not. Any other request
with an allowed ``Origin`` gets ``Access-Control-Allow-Origin`` (``*`` when every origin is
allowed; else the origin itself with ``Vary: Origin``) and ``Access-Control-Expose-Headers``
on its answer, errors included, so a page can read the error body. A request from an origin
not allowed is served without them: the browser then withholds the answer from the page (CORS
guards browsers' pages, not the API; API keys do that).

``CorsHeaders`` is the layer that adds those headers to every answer (refusals and the
application's 500 included: it sits outside them); the preflight is answered by
``web.admission``, where the order of the checks is kept. Both read the same ``CorsPolicy``.
Measured with ``bench.front``: this layer costs about a microsecond per request, where
Starlette's ``CORSMiddleware`` cost 5-6 µs more (it builds ``Headers`` objects per request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.config import Config, CorsConfig
from schemas.errors import Forbidden
from web.docs import DOCS_PATH
from web.errors import ERROR_CODE_KEY, error_response

NO_CORS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
METHODS = b"GET, POST, OPTIONS"


class Cors:
    """The headers of one ``CorsConfig``, encoded once."""

    def __init__(self, config: CorsConfig) -> None:
        self.enabled = config.enabled
        self.any_origin = config.any_origin
        self.origins = frozenset(origin.encode("latin-1") for origin in config.allow_origins)
        self._expose = (
            [(b"access-control-expose-headers", ", ".join(config.expose_headers).encode())]
            if config.expose_headers
            else []
        )
        self._preflight = [
            (b"access-control-allow-methods", METHODS),
            (b"access-control-max-age", str(config.max_age_seconds).encode()),
        ]
        if config.allow_headers:
            allowed = ", ".join(config.allow_headers).encode("latin-1")
            self._preflight.append((b"access-control-allow-headers", allowed))

    @staticmethod
    def applies(path: str) -> bool:
        return path not in NO_CORS_PATHS and not path.startswith(DOCS_PATH)

    def _origin_headers(self, origin: bytes) -> list[tuple[bytes, bytes]] | None:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        if origin in self.origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        return None

    def answer_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """What to add to the answer of a request that came with ``Origin: origin``."""
        found = self._origin_headers(origin)
        return [*found, *self._expose] if found is not None else []

    def preflight(self, scope: Scope, origin: bytes) -> Response:
        """The answer to a preflight from ``origin``; the origin's own headers are added with
        every answer's (``answer_headers``). A refusal's code is left in the scope to count."""
        if self._origin_headers(origin) is None:
            refusal = Forbidden(f"Origin '{origin.decode('latin-1')}' may not call this API")
            scope[ERROR_CODE_KEY] = refusal.code
            return error_response(refusal.status, refusal.type, refusal.code, refusal.message)
        response = Response(status_code=204)
        response.raw_headers = list(self._preflight)
        return response


class CorsPolicy:
    """The ``Cors`` of the config in force, encoded once per config object."""

    def __init__(self) -> None:
        self._built: tuple[Config, Cors] | None = None

    def of(self, config: Config) -> Cors:
        built = self._built
        if built is None or built[0] is not config:
            built = self._built = (config, Cors(config.cors))
        return built[1]


class CorsHeaders:
    """Adds ``Cors.answer_headers`` to the answer of a request with an ``Origin``."""

    def __init__(self, app: ASGIApp, config: Callable[[], Config], policy: CorsPolicy) -> None:
        self.app = app
        self.config = config
        self.policy = policy

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
        extra: list[tuple[bytes, bytes]] = []
        if origin is not None:
            cors = self.policy.of(self.config())
            if cors.enabled and cors.applies(scope["path"]):
                extra = cors.answer_headers(origin)
        if not extra:
            return self.app(scope, receive, send)

        def cors_send(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            return send(message)

        return self.app(scope, receive, cors_send)
