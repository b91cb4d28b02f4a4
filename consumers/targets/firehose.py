"""``kinesis-firehose``: interactions to a Firehose delivery stream (PutRecordBatch).

Each Firehose record is one sample-json document and a newline, so the objects Firehose writes
(to S3 and the like) are newline-delimited JSON. Calls carry up to 500 records / 4 MiB.

PutRecordBatch reports failures per entry (``FailedPutCount``, an ``ErrorCode`` such as
``ServiceUnavailableException`` on the entry): only those records are retried. Firehose keeps
no order of its own — it buffers and a retried record lands in a later object — so within one
call nothing more is done; the ordering rule holds across calls (a key with a failed record
sends nothing more in this batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aws.errors import from_code, translate
from consumers.base import Delivery, Failures
from consumers.targets import TargetContext, aws_client
from consumers.targets.jsonshape import encode, sample_json
from consumers.targets.outcomes import Outcomes
from schemas.codec import INTERACTION
from schemas.config import TargetConfig
from schemas.errors import PayloadTooLarge, Unavailable

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 4 * 1024 * 1024
MAX_RECORD_BYTES = 1000 * 1024


class FirehoseTarget:
    @dataclass(frozen=True)
    class Settings:
        stream_name: str

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> FirehoseTarget.Settings:
            return cls(options["streamName"])

    kinds = frozenset({INTERACTION})
    calls_aws = True

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        self._config = config
        self._stream = self.Settings.parse(config.options, config.group).stream_name
        self._what = f"firehose PutRecordBatch to {self._stream} ({config.group})"
        self._client: Any = None

    def open(self) -> None:
        self._client = aws_client("firehose", self._config)

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._client is None:
            raise Unavailable(f"{self._what}: target is not open")
        outcomes = Outcomes(batch)
        lines: dict[int, bytes] = {}
        for index, delivery in enumerate(batch):
            line = encode(sample_json(delivery.fields, replay=delivery.replay)) + b"\n"
            if len(line) > MAX_RECORD_BYTES:
                outcomes.fail(index, PayloadTooLarge(f"{self._what}: record of {len(line)} bytes"))
            else:
                lines[index] = line
        calls = outcomes.chunks(
            sorted(lines),
            max_records=MAX_RECORDS_PER_CALL,
            max_bytes=MAX_BYTES_PER_CALL,
            size=lambda index: len(lines[index]),
        )
        for chunk in calls:
            self._put(chunk, lines, outcomes)
        return outcomes.failures

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _put(self, chunk: list[int], lines: dict[int, bytes], outcomes: Outcomes) -> None:
        try:
            response = self._client.put_record_batch(
                DeliveryStreamName=self._stream, Records=[{"Data": lines[i]} for i in chunk]
            )
        except (ClientError, BotoCoreError) as exc:
            outcomes.fail_call(chunk, translate(exc, self._what))
            return
        if not response.get("FailedPutCount"):
            return
        for index, result in zip(chunk, response["RequestResponses"], strict=True):
            code = result.get("ErrorCode")
            if code:
                outcomes.fail(index, from_code(code, result.get("ErrorMessage", ""), self._what))
