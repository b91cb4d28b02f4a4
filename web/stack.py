"""The service's HTTP stack: one router (Starlette's) and one list of middleware around it.

Every request goes through, outermost first:

1. ``web.observe.Observe``: counted and timed by route template, one access-log line;
2. ``web.compression.Gzip``: the answer gzipped when the client accepts it;
3. ``web.cors.CorsHeaders``: the CORS headers of a request from an allowed origin;
4. ``web.admission.Admission``: header limits, CORS preflight, API keys and rate limits, in
   that order, and the config version on every answer;
5. ``web.errors.ErrorAnswers``: what the router or an endpoint raises, answered as the JSON
   error body (every ``P13nError``, 404/405, and the 500 of an unexpected error);
6. Starlette's router (which also runs the lifespan), and the route's endpoint.

The router is used without a ``Starlette`` application around it: the application would add
two exception middlewares (server errors, handled errors) with a wrapped ``send`` each, where
``ErrorAnswers`` is one; and it would put any layer of its ``middleware`` list inside its
server-error middleware, so that the 500 answer to an unexpected error would not be observed
with its status or carry the CORS and version headers.
Each layer that adds headers appends them after the ones added below it, so an answer's
headers come in the order they always had: the endpoint's, the version, CORS, gzip.

A layer whose work is done before it passes the request on, or in the ``send`` it wraps
(``Gzip``, ``CorsHeaders``, ``Admission``), is a plain method that returns the awaitable of the
layer below instead of a coroutine that awaits it; a wrapped ``send`` that only looks at or adds
to a message (all but gzip's) returns the inner ``send``'s awaitable the same way. An ASGI
caller awaits whatever the app returns, so nothing changes for it, but no coroutine is created
and no frame is left on the chain that every suspension and resumption of the endpoint passes
through: three layers per request, and each wrapped send of each message (observing, error
tracking, the version stamp, CORS for an allowed ``Origin``). In-process, a request through
the stack to an endpoint that waits once cost 24-27 µs of CPU instead of 30-32 µs.

The cost of one router and ordinary layers, against the single hand-made layer with a route
table of its own (``Front`` and ``DirectRoutes``, before issue 12), measured on a shared 2-core
machine (ratios within one run): ``bench.front`` (CPU per cache hit, in-process) 18.0 µs
against 12.7 µs, plain, and 19.5 against 13.5 with an ``Origin``; ``bench.query`` cache hits at
68% of the bare endpoint (71% before; goal 60%), gzipped 88% (66%); ``bench.ingest`` embedded at
40%, 46% and 46% of bare in three runs against 59%, 47% and 40% before (goal 50%: met and
missed by both on the loaded machine; the difference is within its noise). On an idle machine,
back to back, five rounds each: embedded at 46% of bare before and 48% after. No goal is won
back by a router of our own. Leaving the ``Starlette`` application out (``ErrorAnswers``
instead of its two middlewares) took 0.01 ms of the service's CPU per event, about 6%, on
``bench.ingest``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Router
from starlette.types import ASGIApp, Lifespan

from schemas.config import Config
from web.admission import Admission
from web.compression import Gzip
from web.cors import CorsHeaders, CorsPolicy
from web.errors import ErrorAnswers
from web.observe import Observe, RequestLog, RequestMetrics


def middleware(
    config: Callable[[], Config], metrics: RequestMetrics, access_log: RequestLog
) -> list[Middleware]:
    """The layers, outermost first."""
    cors = CorsPolicy()
    return [
        Middleware(Observe, metrics=metrics, access_log=access_log),
        Middleware(Gzip, config=config),
        Middleware(CorsHeaders, config=config, policy=cors),
        Middleware(Admission, config=config, cors=cors),
    ]


def build(
    routes: Sequence[BaseRoute],
    layers: Sequence[Middleware],
    lifespan: Lifespan[Any] | None = None,
) -> ASGIApp:
    """Starlette's router of ``routes``, its errors answered by ``ErrorAnswers``, inside
    ``layers`` (outermost first). ``lifespan`` gets ``None`` for its application argument:
    there is no ``Starlette`` application."""
    app: ASGIApp = ErrorAnswers(Router(routes=list(routes), lifespan=lifespan))
    for cls, args, kwargs in reversed(layers):
        app = cls(app, *args, **kwargs)
    return app
