"""``lambda``: interactions to a Lambda function, invoked synchronously (RequestResponse).

The payload is ``{"records": [sample-json documents]}``, as many records per invocation as fit
under 6 MB (the synchronous payload limit); a record too large alone is dead-lettered.

Outcomes: a function error (``FunctionError`` Unhandled or Handled — the function raised or
timed out) is retried, so a function that keeps failing a batch sees it dead-lettered after
``maxAttempts``; so are throttling and Lambda's own 5xx. A missing function, missing permission
or a payload Lambda refuses is permanent. An invocation's outcome is every record's in it; a
failed invocation ends the batch (``consumers.targets.outcomes``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aws.errors import translate
from consumers.base import Delivery, Failures
from consumers.targets import TargetContext, aws_client
from consumers.targets.jsonshape import encode, sample_json
from consumers.targets.outcomes import Outcomes
from schemas.codec import INTERACTION
from schemas.config import TargetConfig
from schemas.errors import P13nError, PayloadTooLarge, Unavailable, UpstreamError

MAX_PAYLOAD_BYTES = 6_000_000  # under Lambda's 6 MB, with room for the envelope
_ENVELOPE = len(b'{"records":[]}')
# A synchronous invocation lasts as long as the function runs; wait for a typical consumer
# function, and count a slower one as a timeout (retried; the invocation may have worked).
READ_TIMEOUT = 60.0
ERROR_EXCERPT = 300
# Lambda answers 409 while a function is being created or updated: it is worth another try.
_RETRYABLE_CODES = frozenset({"ResourceConflictException"})


class LambdaTarget:
    @dataclass(frozen=True)
    class Settings:
        function_arn: str

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> LambdaTarget.Settings:
            return cls(options["functionArn"])

    kinds = frozenset({INTERACTION})
    calls_aws = True

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        self._config = config
        self._function = self.Settings.parse(config.options, config.group).function_arn
        self._what = f"lambda Invoke {self._function} ({config.group})"
        self._client: Any = None

    def open(self) -> None:
        self._client = aws_client("lambda", self._config, read_timeout=READ_TIMEOUT)

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._client is None:
            raise Unavailable(f"{self._what}: target is not open")
        outcomes = Outcomes(batch)
        documents: dict[int, bytes] = {}
        for index, delivery in enumerate(batch):
            document = encode(sample_json(delivery.fields, replay=delivery.replay))
            if len(document) + 1 > MAX_PAYLOAD_BYTES - _ENVELOPE:
                outcomes.fail(
                    index, PayloadTooLarge(f"{self._what}: record of {len(document)} bytes")
                )
            else:
                documents[index] = document
        calls = outcomes.chunks(
            sorted(documents),
            max_bytes=MAX_PAYLOAD_BYTES - _ENVELOPE,
            size=lambda index: len(documents[index]) + 1,  # and a comma
        )
        for chunk in calls:
            payload = b'{"records":[' + b",".join(documents[i] for i in chunk) + b"]}"
            error = self._invoke(payload)
            if error is not None:
                outcomes.fail_call(chunk, error)
        return outcomes.failures

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _invoke(self, payload: bytes) -> P13nError | None:
        try:
            response = self._client.invoke(
                FunctionName=self._function, InvocationType="RequestResponse", Payload=payload
            )
            answer = response["Payload"].read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _RETRYABLE_CODES:
                return Unavailable(f"{self._what}: {code}", code=code)
            error = translate(exc, self._what)
            retry_after = exc.response.get("retryAfterSeconds")  # TooManyRequestsException
            if retry_after and str(retry_after).isdigit():
                error.retry_after = float(retry_after)
            return error
        except BotoCoreError as exc:
            return translate(exc, self._what)
        function_error = response.get("FunctionError")
        if function_error:
            return UpstreamError(
                f"{self._what}: function error ({function_error}): {_describe(answer)}",
                code="FunctionError",
            )
        return None


def _describe(answer: bytes) -> str:
    """``errorType: errorMessage`` from a function's error payload, or its start."""
    try:
        error = json.loads(answer)
    except ValueError:
        error = None
    if isinstance(error, dict) and ("errorType" in error or "errorMessage" in error):
        text = f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"
    else:
        text = answer.decode("utf-8", errors="replace")
    return text[:ERROR_EXCERPT]
