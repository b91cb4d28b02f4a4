"""``http``: interactions POSTed to a URL as JSON arrays of sample-json documents.

One POST per chunk of ``batchSize`` records (default 100), in stream order, a chunk never mixing
live and replayed records. Headers: ``content-type: application/json``, the configured
``headers``, ``X-P13N-Signature: sha256=<hex HMAC-SHA256 of the body bytes>`` when a ``secret``
is set, and ``X-P13N-Replay: 1`` on replays.

Answers: 2xx delivered; 429, 408 and 5xx retried (``Retry-After`` in the error's
``retry_after``), as are timeouts and connection errors; any other status is permanent, with the
status and the start of the body in the message. A chunk's outcome is every record's in it; a
failed chunk ends the batch (``consumers.targets.outcomes``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from consumers.base import Delivery, Failures
from consumers.targets import TargetContext
from consumers.targets.jsonshape import encode, sample_json
from consumers.targets.outcomes import Outcomes
from schemas.codec import INTERACTION
from schemas.config import TargetConfig
from schemas.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    P13nError,
    PayloadTooLarge,
    Throttled,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    retry_after_seconds,
)

DEFAULT_BATCH_SIZE = 100
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
BODY_EXCERPT = 200
_PERMANENT = {401: Forbidden, 403: Forbidden, 404: NotFound, 410: NotFound, 413: PayloadTooLarge}


class HttpTarget:
    @dataclass(frozen=True)
    class Settings:
        url: str
        headers: Mapping[str, str]
        secret: str | None = None

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> HttpTarget.Settings:
            return cls(options["url"], options.get("headers", {}), options.get("secret"))

    kinds = frozenset({INTERACTION})

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        settings = self.Settings.parse(config.options, config.group)
        self._url = settings.url
        self._headers = httpx.Headers({"content-type": "application/json", "user-agent": "p13n"})
        self._headers.update(settings.headers)
        self._secret = settings.secret.encode("utf-8") if settings.secret else None
        self._chunk_size = config.batch_size or DEFAULT_BATCH_SIZE
        self._what = f"POST {self._url} ({config.group})"
        self._client: httpx.Client | None = None

    def open(self) -> None:
        self._client = httpx.Client(timeout=TIMEOUT, follow_redirects=False)

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._client is None:
            raise Unavailable(f"{self._what}: target is not open")
        outcomes = Outcomes(batch)
        calls = outcomes.chunks(
            range(len(batch)),
            max_records=self._chunk_size,
            apart=lambda previous, index: batch[previous].replay != batch[index].replay,
        )
        for chunk in calls:
            error = self._post(self._client, [batch[i] for i in chunk])
            if error is not None:
                outcomes.fail_call(chunk, error)
        return outcomes.failures

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _post(self, client: httpx.Client, chunk: list[Delivery]) -> P13nError | None:
        replay = chunk[0].replay
        body = encode([sample_json(d.fields, replay=replay) for d in chunk])
        headers = self._headers.copy()
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-P13N-Signature"] = f"sha256={digest}"
        if replay:
            headers["X-P13N-Replay"] = "1"
        try:
            response = client.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return UpstreamTimeout(f"{self._what}: {type(exc).__name__}", code="Timeout")
        except httpx.TransportError as exc:
            return Unavailable(f"{self._what}: {type(exc).__name__}: {exc}", code="Unreachable")
        return _outcome(response, self._what)


def _outcome(response: httpx.Response, what: str) -> P13nError | None:
    status = response.status_code
    if 200 <= status < 300:
        return None
    message = f"{what}: HTTP {status}: {response.text[:BODY_EXCERPT]!r}"
    code = f"HTTP{status}"
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    if status == 429:
        return Throttled(message, code=code, retry_after=retry_after)
    if status == 408:
        return UpstreamTimeout(message, code=code, retry_after=retry_after)
    if status == 503:
        return Unavailable(message, code=code, retry_after=retry_after)
    if status >= 500:
        return UpstreamError(message, code=code, retry_after=retry_after)
    return _PERMANENT.get(status, InvalidRequest)(message, code=code)
