"""``lambda`` (alias ``function``): a Lambda function invoked synchronously (RequestResponse).

The event is the JSON payload documented in ``query.resolvers.remote``; the function returns the
documented JSON answer (``itemList`` or ``personalizedRanking``, the one for the action), else
502. A function that raises (``FunctionError`` in the answer) is a 502 with the sample's code
``FunctionInvokeError``; its error type is in the message, its stack trace is not. The client: the
ARN's region, ``endpointUrl`` if set, read timeout = ``timeoutMs``, adaptive retries.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from query.base import Query, Recommendations
from query.resolvers import ResolverContext
from query.resolvers.remote import Documents, aws_client, boto_error, parse, payload
from query.settings import option, read_settings
from schemas.config import Variation
from schemas.errors import P13nError, UpstreamError


@dataclass(frozen=True)
class LambdaSettings:
    """A ``lambda`` variation's own settings."""

    arn: str = option("arn")
    endpoint_url: str | None = option("endpointUrl", None)


class LambdaResolver:
    def __init__(self, variation: Variation, context: ResolverContext) -> None:
        self.name = variation.name
        self._documents = Documents.of(variation, context)
        settings = read_settings(LambdaSettings, variation.options, f"variation '{variation.name}'")
        self._arn = settings.arn
        self._what = f"lambda {self._arn}"
        self._lambda = aws_client(
            "lambda",
            region=self._arn.split(":")[3],  # the schema admits only ARNs with a real region
            endpoint_url=settings.endpoint_url,
            timeout_ms=variation.timeout_ms,
        )

    async def resolve(self, query: Query) -> Recommendations:
        return await asyncio.to_thread(self._resolve, query)

    async def close(self) -> None:
        self._lambda.close()

    def _resolve(self, query: Query) -> Recommendations:
        event = json.dumps(payload(query, self._documents)).encode()
        try:
            answer = self._lambda.get().invoke(
                FunctionName=self._arn, InvocationType="RequestResponse", Payload=event
            )
            raw = answer["Payload"].read()
        except P13nError:
            raise
        except Exception as exc:
            raise boto_error(exc, self._what) from exc
        if answer.get("FunctionError"):
            raise UpstreamError(
                f"{self._what}: function error ({answer['FunctionError']}): {_error_type(raw)}",
                code="FunctionInvokeError",
            )
        return parse(raw, query, self._what)


def _error_type(raw: bytes) -> str:
    """The ``errorType`` of a function's error answer (its message and stack trace stay here)."""
    try:
        document: Any = json.loads(raw)
    except ValueError:
        return "unknown error"
    error_type = document.get("errorType") if isinstance(document, dict) else None
    return error_type if isinstance(error_type, str) else "unknown error"
