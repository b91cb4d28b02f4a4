"""``http``: a GET to a recommendation service whose URL is a template in the config.

The ``url`` template names request values in braces: ``{action}``, ``{namespace}``,
``{recommender}``, ``{variation}``, ``{userId}``, ``{itemId}``, ``{itemIds}`` (``,``-joined),
``{numResults}`` (at most 500) and ``{filter}``; an absent value is the empty string. Each value
is percent-encoded with nothing left safe (``/``, ``?``, ``#``, ``@``, ``:``, ``%`` all encoded),
so a caller can only ever fill one path segment or one query value: never the scheme, host or
port (placeholders there are a ``ConfigError``), never another segment or parameter. A value of
``.`` or ``..``, which servers may resolve as a dot-segment, is refused (400).

The call sends the configured ``headers`` and ``accept: application/json``, follows no
redirect, and waits ``timeoutMs`` for each phase (connect, read). Answers: 2xx with the JSON
answer documented in ``query.resolvers.remote``; 429 is ``Throttled`` with its ``Retry-After``;
any other status, a body beyond ``MAX_BODY_BYTES``, or a connection failure is 502
(``UpstreamError``); a timeout is 504 (``UpstreamTimeout``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp
from yarl import URL

from query.base import MAX_RESULTS, Query, Recommendations
from query.resolvers import ResolverContext
from query.resolvers.remote import bad_response, parse
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


class HttpResolver:
    """One aiohttp session per resolver, opened on the first call (a session belongs to the
    running event loop) and closed with the resolver. aiohttp rather than httpx, which the rest
    of the project uses: on this hot path httpx cost about 1.8 ms of CPU per call against about
    0.2 ms for aiohttp (measured in-process against a keep-alive server, 1 and 20 at a time),
    and the query path's overhead budget is a few milliseconds."""

    def __init__(self, variation: Variation, context: ResolverContext) -> None:
        self.name = variation.name
        self._url = UrlTemplate(variation.options["url"])
        self._headers = {"accept": "application/json", "user-agent": "p13n"}
        self._headers.update(dict(variation.options.get("headers") or {}))
        seconds = variation.timeout_ms / 1000.0
        self._timeout = aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds)
        self._session: aiohttp.ClientSession | None = None

    async def resolve(self, query: Query) -> Recommendations:
        # Already percent-encoded by the template: yarl must take it as it is, not re-quote it.
        url = URL(self._url.render(url_values(query, self.name)), encoded=True)
        # The template, not the URL: the URL holds the caller's values.
        what = f"GET {self._url.template} (variation {self.name})"
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                body = await _read(response, what)
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            raise UpstreamTimeout(f"{what}: {type(exc).__name__}", code="Timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{what}: {type(exc).__name__}", code="Unreachable") from exc
        return parse(body, query, what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def closed(self) -> bool:
        return self._session is None or self._session.closed


async def _read(response: aiohttp.ClientResponse, what: str) -> bytes:
    """The body of a 2xx answer (at most ``MAX_BODY_BYTES``); any other status raises."""
    status = response.status
    if not 200 <= status < 300:
        excerpt = await response.content.read(BODY_EXCERPT)
        message = f"{what}: HTTP {status}: {excerpt!r}"
        if status == 429:
            wait = retry_after_seconds(response.headers.get("retry-after"))
            raise Throttled(message, code="HTTP429", retry_after=wait)
        raise UpstreamError(message, code=f"HTTP{status}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise bad_response(what, f"answer larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
