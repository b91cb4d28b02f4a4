"""``responsePostProcessor``: a Lambda function that may rewrite a recommender's answer.

The function is invoked (RequestResponse) with the sample project's payload, so a function
written for the sample works unchanged::

    {"version": "1.0", "action": "recommend-items" | "related-items" | "rerank-items",
     "recommender": {"path": <recommender name>, "config": <its config object>},
     "variation": <the config object of the variation that answered>,
     "userId": str,                      # recommend-items, rerank-items
     "itemId": str,                      # related-items
     "response": {"itemList" | "personalizedRanking": [...], "recommendationId": ...},
     "namespace": str, "numResults": int}   # p13n's additions

where ``numResults`` is what the caller asked for and the response may hold more items when
``lookAheadMultiplier`` enlarged the request (``min(numResults * multiplier,
lookAheadMaximumValue, 500)``), so the function can drop items and still fill the page. It
returns the response object, same shape; the service truncates it to ``numResults``. A function
error (``FunctionInvokeError``), a timeout or an answer without the shape's list is the
recommender's failure (502/504, type ``Function``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import anyio.to_thread

from query.base import MAX_RESULTS, Query, Recommendations
from schemas.config import PostProcessorConfig, Recommender, Variation, thawed
from schemas.errors import RetryableError, UpstreamError

PAYLOAD_VERSION = "1.0"


def look_ahead(settings: PostProcessorConfig | None, num_results: int) -> int:
    """How many items to ask the recommender for, so the post-processor has room to drop."""
    if settings is None or settings.look_ahead_multiplier is None:
        return num_results
    wanted = math.ceil(num_results * settings.look_ahead_multiplier)
    if settings.look_ahead_maximum is not None:
        wanted = min(wanted, settings.look_ahead_maximum)
    return max(num_results, min(wanted, MAX_RESULTS))


class PostProcessor:
    def __init__(
        self, settings: PostProcessorConfig, recommender: Recommender, timeout_s: float = 5.0
    ) -> None:
        self.arn = settings.arn
        self._timeout = timeout_s
        self._client: Any = None
        # Thawed once: the payload carries them on every call.
        self._recommender = thawed(recommender.document)
        self._variations = {name: thawed(v.document) for name, v in recommender.variations.items()}

    def payload(
        self, query: Query, variation: Variation, asked: int, answer: Recommendations
    ) -> dict[str, Any]:
        """The documented event for the function (see the module docstring)."""
        body: dict[str, Any] = {
            "version": PAYLOAD_VERSION,
            "action": query.action,
            "recommender": {"path": query.recommender, "config": self._recommender},
            "variation": self._variations.get(variation.name, {}),
        }
        if query.action == "related-items":
            body["itemId"] = query.item_id
        else:
            body["userId"] = query.user_id
        body["response"] = answer.body(query.shape)
        body["namespace"] = query.namespace
        body["numResults"] = asked
        return body

    async def apply(
        self, query: Query, variation: Variation, asked: int, answer: Recommendations
    ) -> Recommendations:
        payload = self.payload(query, variation, asked, answer)
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
        from aws.clients import client
        from aws.errors import translate

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
            raise UpstreamError("the response post-processor failed", code="FunctionInvokeError")
        try:
            return json.loads(body)
        except ValueError:
            raise UpstreamError(
                "the response post-processor returned no JSON", code="InvalidPostProcessorResponse"
            ) from None
