"""Direct routes: hot endpoints served as plain ASGI apps, past Starlette's router.

Innermost in the middleware list, so every middleware above it (observation, limits, API keys)
runs for these requests exactly as for any other. Only what Starlette would do between the
middleware and the endpoint is done here instead, more cheaply: match the route, set
``scope["route"]`` and the path parameters, and turn a ``P13nError`` into its response with
the application's own handler. Any other exception propagates, as it does past Starlette's
exception middleware, to the server-error handler at the top of the stack.

On ``POST /events`` that intermediate layer (router, exception middleware, Request and
Response objects) costs about as much CPU as validating and encoding the event.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from p13n.errors import p13n_error
from schemas.errors import P13nError


class DirectRoutes:
    """Serve each ``(route, app)`` pair's full matches with ``app``; pass everything else on.

    Each route must be the one the router would choose for the requests it fully matches
    (first in the route list, or no earlier route overlapping it), so that which code answers
    a request never depends on this shortcut. ``app`` receives the scope with ``route`` and
    ``path_params`` set, and may raise ``P13nError``.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[tuple[Route, ASGIApp]]) -> None:
        self.app = app
        # Each route's literal start ("/events/", "/recommend-items/"…): a path that does not
        # begin with it cannot match, and a string test is far cheaper than the route's regex.
        self.routes = tuple((route.path.split("{", 1)[0], route, app) for route, app in routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            for prefix, route, endpoint in self.routes:
                if not path.startswith(prefix):
                    continue
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope["route"] = route
                    scope.update(child_scope)
                    await self._serve(endpoint, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(endpoint: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await endpoint(scope, receive, send)
        except P13nError as exc:
            # Direct endpoints raise only before they start answering, so there is never a
            # started response to collide with (Starlette would raise RuntimeError then).
            response = await p13n_error(Request(scope, receive, send), exc)
            await response(scope, receive, send)
