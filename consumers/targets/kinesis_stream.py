"""``kinesis-stream``: interactions copied to another Kinesis data stream (PutRecords).

``format``: ``sample-json`` (default) writes the sample project's JSON (``jsonshape``);
``avro`` writes the stream record's own bytes unchanged, for readers that use p13n's codec.
Each record keeps its partition key, so one session's records stay on one shard there too.

Ordering: PutRecords may fail any entry alone and still store the entries after it, so two
records of one key in one call could be stored out of order. A call therefore carries at most
one record per partition key: the batch goes in *rounds*, round n sending the n-th record of
each key (500 entries / 5 MiB per call). A key whose record failed with *retry* sends nothing
more; its later records are ``Deferred``. Keys that see one record per batch — the usual case
with session keys — still share a single call; a key with n records costs n calls.
"""

from __future__ import annotations

from collections import deque
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
from schemas.errors import ConfigError, PayloadTooLarge, Unavailable
from streams.aggregation import MAX_KINESIS_RECORD_BYTES

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024  # data and partition keys
FORMATS = ("sample-json", "avro")


class KinesisStreamTarget:
    @dataclass(frozen=True)
    class Settings:
        stream_name: str
        format: str = "sample-json"

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> KinesisStreamTarget.Settings:
            settings = cls(options["streamName"], options.get("format", "sample-json"))
            if settings.format not in FORMATS:
                raise ConfigError(f"{where}: unknown kinesis-stream format '{settings.format}'")
            return settings

    kinds = frozenset({INTERACTION})
    calls_aws = True

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        self._config = config
        settings = self.Settings.parse(config.options, config.group)
        self._stream = settings.stream_name
        self._format = settings.format
        self._what = f"kinesis PutRecords to {self._stream} ({config.group})"
        self._client: Any = None

    def open(self) -> None:
        self._client = aws_client("kinesis", self._config)

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        if self._client is None:
            raise Unavailable(f"{self._what}: target is not open")
        outcomes = Outcomes(batch)
        entries: dict[int, dict[str, Any]] = {}
        sizes: dict[int, int] = {}
        lanes: dict[str, deque[int]] = {}
        for index, delivery in enumerate(batch):
            key = delivery.record.partition_key
            data = self._data(delivery)
            size = len(data) + len(key.encode("utf-8"))
            if size > MAX_KINESIS_RECORD_BYTES:
                outcomes.fail(index, PayloadTooLarge(f"{self._what}: record of {size} bytes"))
                continue
            entries[index] = {"Data": data, "PartitionKey": key}
            sizes[index] = size
            lanes.setdefault(key, deque()).append(index)

        while lanes:
            round_ = []
            for key, lane in list(lanes.items()):
                while lane and not outcomes.sendable(lane[0]):
                    lane.popleft()  # its outcome is recorded: deferred, or the batch ended
                if lane:
                    round_.append(lane.popleft())
                if not lane:
                    del lanes[key]
            calls = outcomes.chunks(
                sorted(round_),
                max_records=MAX_RECORDS_PER_CALL,
                max_bytes=MAX_BYTES_PER_CALL,
                size=sizes.__getitem__,
            )
            for chunk in calls:
                self._put(chunk, entries, outcomes)
        return outcomes.failures

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _data(self, delivery: Delivery) -> bytes:
        if self._format == "avro":
            return delivery.record.data
        return encode(sample_json(delivery.fields, replay=delivery.replay))

    def _put(
        self, chunk: list[int], entries: dict[int, dict[str, Any]], outcomes: Outcomes
    ) -> None:
        try:
            response = self._client.put_records(
                StreamName=self._stream, Records=[entries[i] for i in chunk]
            )
        except (ClientError, BotoCoreError) as exc:
            outcomes.fail_call(chunk, translate(exc, self._what))
            return
        if not response.get("FailedRecordCount"):
            return
        for index, result in zip(chunk, response["Records"], strict=True):
            code = result.get("ErrorCode")
            if code:
                outcomes.fail(index, from_code(code, result.get("ErrorMessage", ""), self._what))
