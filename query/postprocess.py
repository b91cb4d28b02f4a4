"""``responsePostProcessor``: a Lambda function that may rewrite a recommender's answer.

The function is invoked (RequestResponse) with::

    {"namespace", "action", "recommender", "variation", "userId", "itemId", "numResults",
     "response": {"itemList" | "personalizedRanking": [...], "recommendationId": ...}}

where ``numResults`` is what the caller asked for and the response may hold more items when
``lookAheadMultiplier`` enlarged the request (``min(numResults * multiplier,
lookAheadMaximumValue, 500)``), so the function can drop items and still fill the page. It
returns the response object, same shape; the service truncates it to ``numResults``. A function
error, a timeout or an answer without the shape's list is the recommender's failure (502/504).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import anyio.to_thread

from query.base import MAX_RESULTS, Query, Recommendations
from schemas.errors import RetryableError, UpstreamError


def look_ahead(settings: Mapping[str, Any] | None, num_results: int) -> int:
    """How many items to ask the recommender for, so the post-processor has room to drop."""
    if not settings or "lookAheadMultiplier" not in settings:
        return num_results
    wanted = math.ceil(num_results * float(settings["lookAheadMultiplier"]))
    if "lookAheadMaximumValue" in settings:
        wanted = min(wanted, int(settings["lookAheadMaximumValue"]))
    return max(num_results, min(wanted, MAX_RESULTS))


class PostProcessor:
    def __init__(self, settings: Mapping[str, Any], timeout_s: float = 5.0) -> None:
        self.arn = str(settings["arn"])
        self._timeout = timeout_s
        self._client: Any = None

    async def apply(
        self, query: Query, variation: str, asked: int, answer: Recommendations
    ) -> Recommendations:
        payload = {
            "namespace": query.namespace,
            "action": query.action,
            "recommender": query.recommender,
            "variation": variation,
            "userId": query.user_id,
            "itemId": query.item_id,
            "numResults": asked,
            "response": answer.body(query.shape),
        }
        document = await anyio.to_thread.run_sync(self._invoke, payload)
        items = document.get(query.shape) if isinstance(document, dict) else None
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and isinstance(item.get("itemId"), str) for item in items
        ):
            raise UpstreamError(
                f"the response post-processor did not return a '{query.shape}' list of items",
                code="InvalidPostProcessorResponse",
            )
        extra = {k: v for k, v in document.items() if k not in (query.shape, "recommendationId")}
        rid = document.get("recommendationId", answer.recommendation_id)
        return Recommendations(tuple(items), rid if isinstance(rid, str) else None, extra)

    def _invoke(self, payload: Mapping[str, Any]) -> Any:
        from streams.aws import client, translate

        try:
            if self._client is None:
                self._client = client(
                    "lambda", max_attempts=2, read_timeout=self._timeout, retry_mode="adaptive"
                )
            reply = self._client.invoke(
                FunctionName=self.arn,
                InvocationType="RequestResponse",
                Payload=json.dumps(payload).encode(),
            )
            body = reply["Payload"].read()
        except Exception as exc:
            error = translate(exc, "response post-processor")
            if not isinstance(error, RetryableError):  # a rejected call is still its failure
                error = UpstreamError(error.message, code=error.code)
            raise error from exc
        if reply.get("FunctionError"):
            raise UpstreamError(
                "the response post-processor failed", code="PostProcessorFunctionError"
            )
        try:
            return json.loads(body)
        except ValueError:
            raise UpstreamError(
                "the response post-processor returned no JSON", code="InvalidPostProcessorResponse"
            ) from None
