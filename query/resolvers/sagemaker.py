"""``sagemaker``: a SageMaker real-time inference endpoint (InvokeEndpoint).

The request body is the JSON payload documented in ``query.resolvers.remote`` (``ContentType``
and ``Accept`` ``application/json``); the endpoint answers with the documented JSON answer
(``itemList`` or ``personalizedRanking``, the one for the action), else 502. The client: region
``region`` else the standard AWS settings, ``endpointUrl`` if set, read timeout = ``timeoutMs``,
adaptive retries. A model that fails (SageMaker's ``ModelError``) is a 502 with that code.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from query.base import Query, Recommendations
from query.resolvers import ResolverContext
from query.resolvers.remote import Documents, aws_client, boto_error, parse, payload
from query.settings import option, read_settings
from schemas.config import Variation
from schemas.errors import P13nError

JSON = "application/json"


@dataclass(frozen=True)
class SageMakerSettings:
    """A ``sagemaker`` variation's own settings."""

    endpoint_name: str = option("endpointName")
    region: str | None = option("region", None)
    endpoint_url: str | None = option("endpointUrl", None)


class SageMakerResolver:
    def __init__(self, variation: Variation, context: ResolverContext) -> None:
        self.name = variation.name
        self._documents = Documents.of(variation, context)
        settings = read_settings(
            SageMakerSettings, variation.options, f"variation '{variation.name}'"
        )
        self._endpoint = settings.endpoint_name
        self._what = f"sagemaker endpoint {self._endpoint}"
        self._runtime = aws_client(
            "sagemaker-runtime",
            region=settings.region,
            endpoint_url=settings.endpoint_url,
            timeout_ms=variation.timeout_ms,
        )

    async def resolve(self, query: Query) -> Recommendations:
        return await asyncio.to_thread(self._resolve, query)

    async def close(self) -> None:
        self._runtime.close()

    def _resolve(self, query: Query) -> Recommendations:
        body = json.dumps(payload(query, self._documents)).encode()
        try:
            answer = self._runtime.get().invoke_endpoint(
                EndpointName=self._endpoint, Body=body, ContentType=JSON, Accept=JSON
            )
            raw = answer["Body"].read()
        except P13nError:
            raise
        except Exception as exc:
            raise boto_error(exc, self._what) from exc
        return parse(raw, query, self._what)
