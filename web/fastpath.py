"""Direct routes: hot endpoints served as plain ASGI apps, past Starlette's router.

``web.middleware.Front`` asks them first, after its own checks (limits, API keys), so every
check runs for these requests exactly as for any other. Only what Starlette would do between the
middleware and the endpoint is done here instead, more cheaply: match the route, set
``scope["route"]`` and the path parameters, and turn a ``P13nError`` into its response with
the application's own handler. Any other exception propagates, as it does past Starlette's
exception middleware, to the server-error handler at the top of the stack.

On ``POST /events`` that intermediate layer (router, exception middleware, Request and
Response objects) costs about as much CPU as validating and encoding the event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.convertors import StringConvertor
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.errors import P13nError
from web.errors import p13n_error


class _Pattern:
    """A route's path split at ``/``: literal segments and parameter names.

    Matches exactly what the route's own regex matches when every parameter is a plain
    ``{name}`` (Starlette's string convertor: one non-empty segment, no ``/``), and costs a
    split and a few comparisons instead of a regex, a convertor call per parameter and the
    child scope Starlette builds. Routes with other convertors use ``Route.matches``.
    """

    def __init__(self, route: Route) -> None:
        parts = route.path.split("/")
        # (text, is_param): a parameter segment is exactly "{name}".
        self.segments = tuple(
            (part[1:-1], True) if part.startswith("{") and part.endswith("}") else (part, False)
            for part in parts
        )
        self.simple = all(
            isinstance(convertor, StringConvertor) for convertor in route.param_convertors.values()
        ) and not any(("{" in text or "}" in text or ":" in text) for text, _ in self.segments)

    def params(self, path: str) -> dict[str, str] | None:
        parts = path.split("/")
        if len(parts) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for part, (text, is_param) in zip(parts, self.segments, strict=True):
            if is_param:
                if not part:
                    return None
                found[text] = part
            elif part != text:
                return None
        return found


class DirectRoutes:
    """Serve each ``(route, app)`` pair's full matches with ``app``.

    Each route must be the one the router would choose for the requests it fully matches
    (first in the route list, or no earlier route overlapping it), so that which code answers
    a request never depends on this shortcut. ``app`` receives the scope with ``route`` and
    ``path_params`` set, and may raise ``P13nError``. A path that matches but with another
    method is left to the router (it answers 405 with ``Allow``).
    """

    def __init__(self, routes: Sequence[tuple[Route, ASGIApp]]) -> None:
        # Each route's literal start ("/events/", "/recommend-items/"…): a path that does not
        # begin with it cannot match, and a string test is cheaper than anything else.
        self.routes = tuple(
            (route.path.split("{", 1)[0], _Pattern(route), route, app) for route, app in routes
        )

    def _find(self, scope: Scope) -> tuple[Route, ASGIApp, dict[str, Any]] | None:
        path = scope["path"]
        for prefix, pattern, route, app in self.routes:
            if not path.startswith(prefix):
                continue
            if pattern.simple and not scope.get("root_path"):
                params = pattern.params(path)
                if params is None or (route.methods and scope["method"] not in route.methods):
                    continue
                return route, app, {**scope.get("path_params", {}), **params}
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return route, app, child_scope["path_params"]
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request if one of the routes fully matches it; False if none does."""
        found = self._find(scope)
        if found is None:
            return False
        route, endpoint, params = found
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = params
        try:
            await endpoint(scope, receive, send)
        except P13nError as exc:
            # Direct endpoints raise only before they start answering, so there is never a
            # started response to collide with (Starlette would raise RuntimeError then).
            response = await p13n_error(Request(scope, receive, send), exc)
            await response(scope, receive, send)
        return True
