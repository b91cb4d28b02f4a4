"""``http``: a GET to a recommendation service whose URL is a template in the config.

The ``url`` template names request values in braces: ``{action}``, ``{namespace}``,
``{recommender}``, ``{variation}``, ``{userId}``, ``{itemId}``, ``{itemIds}`` (``,``-joined),
``{numResults}`` (at most 500) and ``{filter}``; an absent value is the empty string. Each value
is percent-encoded with nothing left safe (``/``, ``?``, ``#``, ``@``, ``:``, ``%`` all encoded),
so a caller can only ever fill one path segment or one query value: never the scheme, host or
port (placeholders there are a ``ConfigError``), never another segment or parameter. A value of
``.`` or ``..``, which servers may resolve as a dot-segment, is refused (400).

The call sends the configured ``headers`` and ``accept: application/json``, follows no
redirect, and waits ``timeoutMs`` for each phase (connect, each read), over keep-alive
connections (``query.resolvers.http_client``). Answers: 2xx with the JSON
answer documented in ``query.resolvers.remote``; 429 is ``Throttled`` with its ``Retry-After``;
any other status, a body beyond ``MAX_BODY_BYTES``, or a connection failure is 502
(``UpstreamError``); a timeout is 504 (``UpstreamTimeout``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from query.base import MAX_RESULTS, Query, Recommendations
from query.resolvers import ResolverContext
from query.resolvers.http_client import BodyTooLarge, HttpPool
from query.resolvers.remote import bad_response, parse
from query.settings import option, read_settings
from schemas.config import Variation
from schemas.errors import (
    ConfigError,
    InvalidRequest,
    Throttled,
    UpstreamError,
    UpstreamTimeout,
    retry_after_seconds,
)

PLACEHOLDERS = frozenset(
    {
        "action",
        "namespace",
        "recommender",
        "variation",
        "userId",
        "itemId",
        "itemIds",
        "numResults",
        "filter",
    }
)
MAX_BODY_BYTES = 4 * 1024 * 1024
BODY_EXCERPT = 200
# scheme://authority, up to where the path, query or fragment starts
_ORIGIN = re.compile(r"^https?://[^/?#]*")


class UrlTemplate:
    """A config URL with placeholders, checked once; ``render`` fills them, encoded."""

    def __init__(self, template: str) -> None:
        origin = _ORIGIN.match(template)
        if origin is None:
            raise ConfigError(f"url '{template}' is not an absolute http(s) URL")
        if "{" in origin.group() or "}" in origin.group():
            raise ConfigError(f"url '{template}': no placeholders in the scheme, host or port")
        self._parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:  # an unmatched brace
            raise ConfigError(f"url '{template}': {exc}") from exc
        for literal, name, spec, conversion in parsed:
            if name is not None and (name not in PLACEHOLDERS or spec or conversion):
                known = ", ".join(sorted(PLACEHOLDERS))
                raise ConfigError(f"url '{template}': '{{{name}}}' is not one of {known}")
            self._parts.append((literal, name))
        self.template = template
        self.origin = origin.group()

    def render(self, values: Mapping[str, str | None]) -> str:
        """The URL with every placeholder replaced by its value, percent-encoded."""
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name is not None:
                value = values.get(name) or ""
                if value in (".", ".."):
                    raise InvalidRequest(f"'{value}' is not an acceptable {name}")
                try:
                    out.append(quote(value, safe=""))
                except UnicodeEncodeError as exc:  # a lone surrogate: not text at all
                    raise InvalidRequest(f"{name} is not valid text") from exc
        return "".join(out)

    def target(self, values: Mapping[str, str | None]) -> str:
        """What follows the origin in the rendered URL, as a request target: the path (``/``
        at least) and query; a fragment is never sent."""
        rest = self.render(values)[len(self.origin) :].split("#", 1)[0]
        return rest if rest.startswith("/") else "/" + rest


def url_values(query: Query, variation: str) -> dict[str, str | None]:
    return {
        "action": query.action,
        "namespace": query.namespace,
        "recommender": query.recommender,
        "variation": variation,
        "userId": query.user_id,
        "itemId": query.item_id,
        "itemIds": ",".join(query.item_ids),
        "numResults": str(min(query.num_results, MAX_RESULTS)),
        "filter": query.filter,
    }


@dataclass(frozen=True)
class HttpSettings:
    """An ``http`` variation's own settings."""

    url: str = option("url")
    headers: Mapping[str, str] = option("headers", None)


class HttpResolver:
    """Calls go through one ``HttpPool`` per resolver (keep-alive connections to the template's
    origin), closed with the resolver."""

    def __init__(self, variation: Variation, context: ResolverContext) -> None:
        self.name = variation.name
        settings = read_settings(HttpSettings, variation.options, f"variation '{variation.name}'")
        self._url = UrlTemplate(settings.url)
        headers = {"accept": "application/json", "user-agent": "p13n"}
        headers.update(settings.headers)
        seconds = variation.timeout_ms / 1000.0
        try:
            self._pool = HttpPool(
                self._url.origin,
                headers,
                connect_timeout=seconds,
                read_timeout=seconds,
                max_body=MAX_BODY_BYTES,
            )
        except ValueError as exc:
            raise ConfigError(f"variation '{variation.name}': {exc}") from exc

    async def resolve(self, query: Query) -> Recommendations:
        target = self._url.target(url_values(query, self.name))
        # The template, not the URL: the URL holds the caller's values.
        what = f"GET {self._url.template} (variation {self.name})"
        try:
            answer = await self._pool.get(target)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{what}: {type(exc).__name__}", code="Timeout") from exc
        except BodyTooLarge as exc:
            raise bad_response(what, str(exc)) from exc
        except ConnectionError as exc:
            raise UpstreamError(f"{what}: {type(exc).__name__}", code="Unreachable") from exc
        status = answer.status
        if not 200 <= status < 300:
            message = f"{what}: HTTP {status}: {answer.body[:BODY_EXCERPT]!r}"
            if status == 429:
                wait = retry_after_seconds(answer.headers.get("retry-after"))
                raise Throttled(message, code="HTTP429", retry_after=wait)
            raise UpstreamError(message, code=f"HTTP{status}", backend_status=status)
        return parse(answer.body, query, what)

    async def close(self) -> None:
        await self._pool.close()

    @property
    def closed(self) -> bool:
        return self._pool.closed
