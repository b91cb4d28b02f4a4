"""The Lambda handler, invoked with the events a Kinesis event source mapping sends.

Records are written to kinesis-local by our own writer (plain and KPL-aggregated), read back
with GetRecords, and shaped into the mapping's event exactly as AWS documents it, sequence
numbers and arrival times included. The target is the real ``interactions`` store behind a
wrapper that fails chosen events; dead letters go to S3 on moto server, as in AWS.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import pytest

import consumers.lambda_handler as lambda_handler
import consumers.targets
from aws.clients import client
from consumers.base import Deferred, Delivery, Failures
from consumers.deadletters_s3 import S3DeadLetterStore
from consumers.targets.interactions import InteractionsTarget, store_path
from schemas.errors import ConfigError, InvalidRequest, P13nError, Throttled
from schemas.sources import load_from
from streams.base import Entry
from streams.kinesis import KinesisWriter
from tests.consumers.test_runner import CODEC, interaction
from tests.fixtures.servers import kinesis_client, wait_until


class FlakyInteractions(InteractionsTarget):
    """The interactions store, failing chosen events: those in ``reject`` for good, those in
    ``flaky`` with throttling for their first ``flaky_failures`` attempts. Later records of a
    throttled record's key are deferred, as the target contract asks."""

    reject: ClassVar[set[str]] = set()
    flaky: ClassVar[set[str]] = set()
    flaky_failures: ClassVar[int] = 0
    attempts: ClassVar[Counter[str]] = Counter()
    opened: ClassVar[int] = 0

    def open(self) -> None:
        type(self).opened += 1
        super().open()

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        failures: dict[int, P13nError] = {}
        blocked: set[str] = set()
        for index, delivery in enumerate(batch):
            event = delivery.fields["eventList"][0]["eventId"]
            if delivery.record.partition_key in blocked:
                failures[index] = Deferred()
                continue
            self.attempts[event] += 1
            if event in self.reject:
                failures[index] = InvalidRequest(f"item of {event} rejected")
            elif event in self.flaky and self.attempts[event] <= self.flaky_failures:
                failures[index] = Throttled("slow down")
                blocked.add(delivery.record.partition_key)
        super().deliver([d for i, d in enumerate(batch) if i not in failures])
        return failures


@dataclass
class Context:
    """The attributes of the Lambda context object that Powertools reads."""

    function_name: str = "p13n-consumer-store"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:p13n-consumer-store"
    aws_request_id: str = ""

    def __post_init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture
def function(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A deployed function: config file, env, S3 bucket for dead letters, counters reset."""
    registry = dict(consumers.targets.REGISTRY)
    registry["interactions"] = f"{__name__}:FlakyInteractions"
    monkeypatch.setattr(consumers.targets, "REGISTRY", MappingProxyType(registry))
    for name, value in (
        ("reject", set()),
        ("flaky", set()),
        ("flaky_failures", 0),
        ("attempts", Counter()),
        ("opened", 0),
    ):
        monkeypatch.setattr(FlakyInteractions, name, value)
    s3 = client("s3", endpoint_url=moto_server)
    bucket = f"dead-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    document = {
        "namespaces": {
            "shop": {
                "eventTargets": [
                    {"type": "interactions", "name": "store", "maxRecordAgeSeconds": 3600}
                ]
            },
            "news": {"eventTargets": [{"type": "interactions", "name": "store"}]},
        },
        "dataDir": str(tmp_path),
        "deadLetter": {"uri": f"s3://{bucket}/dead-letters"},
    }
    config_path = tmp_path / "p13n.json"
    config_path.write_text(json.dumps(document))
    loads: list[str] = []

    def counting_load(source: Any) -> Any:
        loads.append(source.name)
        return load_from(source)

    monkeypatch.setattr(lambda_handler, "load_from", counting_load)
    monkeypatch.setenv("P13N_CONFIG", str(config_path))
    monkeypatch.setenv("P13N_TARGET", "shop/store")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    lambda_handler.reset()
    yield {
        "loads": loads,
        "dead": S3DeadLetterStore(s3, bucket, "dead-letters"),
        "data_dir": str(tmp_path),
    }
    lambda_handler.reset()


def write(kinesis_local: str, stream: str, entries: list[Entry], *, aggregate: bool) -> None:
    writer = KinesisWriter(kinesis_client(kinesis_local), stream, aggregate=aggregate)
    writer.put_batch(entries)
    writer.close()


def mapping_event(kinesis_local: str, stream: str, count: int) -> dict[str, Any]:
    """The first ``count`` Kinesis records of the stream's only shard, as the mapping sends
    them (https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html)."""
    kinesis = kinesis_client(kinesis_local)
    (shard,) = kinesis.list_shards(StreamName=stream)["Shards"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records: list[dict[str, Any]] = []

    def fetch() -> bool:
        nonlocal iterator
        page = kinesis.get_records(ShardIterator=iterator)
        records.extend(page["Records"])
        iterator = page["NextShardIterator"]
        return len(records) >= count

    wait_until(fetch, 10, f"{count} records on {stream}")
    arn = f"arn:aws:kinesis:us-east-1:123456789012:stream/{stream}"
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": record["PartitionKey"],
                    "sequenceNumber": record["SequenceNumber"],
                    "data": base64.b64encode(record["Data"]).decode(),
                    "approximateArrivalTimestamp": record[
                        "ApproximateArrivalTimestamp"
                    ].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard['ShardId']}:{record['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/p13n-consumer",
                "awsRegion": "us-east-1",
                "eventSourceARN": arn,
            }
            for record in records[:count]
        ]
    }


def retry_from(event: dict[str, Any], sequence: str) -> dict[str, Any]:
    """The batch the mapping sends after a reported failure: from that record on."""
    records = event["Records"]
    start = next(i for i, r in enumerate(records) if r["kinesis"]["sequenceNumber"] == sequence)
    return {"Records": records[start:]}


def sequence_of(event: dict[str, Any], index: int) -> str:
    return str(event["Records"][index]["kinesis"]["sequenceNumber"])


def stored(data_dir: str) -> list[str]:
    with sqlite3.connect(store_path(data_dir)) as conn:
        rows = conn.execute("SELECT event_id FROM interactions ORDER BY event_id").fetchall()
    conn.close()
    return [row[0] for row in rows]


def metrics_of(output: str) -> list[dict[str, Any]]:
    """The EMF documents Powertools printed (one per invocation)."""
    documents = []
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            documents.append(json.loads(line))
    return documents


def test_a_mixed_plain_batch_reports_the_first_unsettled_record_and_dead_letters_the_bad_one(
    function, kinesis_local, make_kinesis_stream, capsys
):
    stream = make_kinesis_stream(kinesis_local, shards=1)
    # keys: a ok; b rejected for good; c throttled then fine, with a successor waiting; d ok
    sessions = ["a", "b", "c", "c", "d"]
    write(
        kinesis_local,
        stream,
        [Entry(s, interaction(s, n)) for n, s in enumerate(sessions)],
        aggregate=False,
    )
    FlakyInteractions.reject = {"b-1"}
    FlakyInteractions.flaky = {"c-2"}
    FlakyInteractions.flaky_failures = lambda_handler.ATTEMPTS  # fails every try of one call
    event = mapping_event(kinesis_local, stream, 5)

    result = lambda_handler.handler(event, Context())

    # c-2 is still unsettled, c-3 waits behind it: the mapping retries from c-2's record
    assert result == {"batchItemFailures": [{"itemIdentifier": sequence_of(event, 2)}]}
    assert stored(function["data_dir"]) == ["a-0", "d-4"]
    assert FlakyInteractions.attempts["c-2"] == lambda_handler.ATTEMPTS
    (letter,) = function["dead"].list("shop/store")
    assert (letter.code, letter.message, letter.attempts) == (
        "ValidationError",
        "item of b-1 rejected",
        1,
    )
    assert letter.sequence_number == sequence_of(event, 1)
    assert letter.data == base64.b64decode(event["Records"][1]["kinesis"]["data"])
    assert letter.shard_id == event["Records"][1]["eventID"].split(":")[0]
    (emf,) = metrics_of(capsys.readouterr().out)
    assert (emf["Delivered"], emf["DeadLettered"], emf["Failed"]) == ([2], [1], [2])
    assert emf["group"] == "shop/store"
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "p13n"

    again = lambda_handler.handler(retry_from(event, sequence_of(event, 2)), Context())

    assert again == {"batchItemFailures": []}
    assert stored(function["data_dir"]) == ["a-0", "c-2", "c-3", "d-4"]
    assert len(list(function["dead"].list())) == 1
    # one container: the config was read and the target opened on the first invocation only
    assert len(function["loads"]) == 1
    assert FlakyInteractions.opened == 1


def test_kpl_aggregates_are_unpacked_and_a_failure_inside_one_retries_from_that_aggregate(
    function, kinesis_local, make_kinesis_stream
):
    stream = make_kinesis_stream(kinesis_local, shards=1)
    # three aggregates of five user records each (one put_batch each: one Kinesis record)
    for part in range(3):
        entries = [Entry(f"k{n}", interaction(f"k{n}", n)) for n in range(part * 5, part * 5 + 5)]
        write(kinesis_local, stream, entries, aggregate=True)
    FlakyInteractions.reject = {"k1-1"}
    FlakyInteractions.flaky = {"k7-7"}
    FlakyInteractions.flaky_failures = lambda_handler.ATTEMPTS
    event = mapping_event(kinesis_local, stream, 3)
    assert all(
        base64.b64decode(r["kinesis"]["data"]).startswith(b"\xf3\x89\x9a\xc2")
        for r in event["Records"]
    )

    result = lambda_handler.handler(event, Context())

    assert result == {"batchItemFailures": [{"itemIdentifier": sequence_of(event, 1)}]}
    expected = {f"k{n}-{n}" for n in range(15)} - {"k1-1", "k7-7"}
    assert set(stored(function["data_dir"])) == expected  # other keys flowed past k7
    (letter,) = function["dead"].list("shop/store")
    assert (letter.sequence_number, letter.sub_sequence) == (sequence_of(event, 0), 1)
    assert letter.partition_key == "k1"
    assert CODEC.decode(letter.data)[1]["eventList"][0]["eventId"] == "k1-1"

    again = lambda_handler.handler(retry_from(event, sequence_of(event, 1)), Context())

    assert again == {"batchItemFailures": []}
    assert set(stored(function["data_dir"])) == expected | {"k7-7"}
    assert len(list(function["dead"].list())) == 1
    assert len(function["loads"]) == 1


def test_records_not_ours_or_too_old_to_retry_are_dead_lettered_not_reported(
    function, kinesis_local, make_kinesis_stream
):
    stream = make_kinesis_stream(kinesis_local, shards=1)
    entries = [
        Entry("x", b"not avro at all"),
        Entry("old", interaction("old", 1)),
        Entry("other", interaction("other", 2, namespace="news")),  # not this target's
        Entry("y", interaction("y", 3)),
    ]
    write(kinesis_local, stream, entries, aggregate=False)
    FlakyInteractions.flaky = {"old-1"}
    FlakyInteractions.flaky_failures = 100
    event = mapping_event(kinesis_local, stream, 4)
    # the mapping has been retrying this one for two hours: past maxRecordAgeSeconds (1 h)
    event["Records"][1]["kinesis"]["approximateArrivalTimestamp"] -= 7200

    assert lambda_handler.handler(event, Context()) == {"batchItemFailures": []}

    assert stored(function["data_dir"]) == ["y-3"]
    letters = {letter.code: letter for letter in function["dead"].list("shop/store")}
    assert set(letters) == {"NotAvro", "TooManyRequests"}
    assert letters["NotAvro"].data == b"not avro at all"
    assert letters["TooManyRequests"].error_type == "retryable:Throttled"


def test_the_container_loads_once_and_a_failed_cold_start_is_tried_again(
    function, monkeypatch, capsys
):
    empty = {"Records": []}
    monkeypatch.setenv("P13N_TARGET", "store")  # in two namespaces: ambiguous
    with pytest.raises(ConfigError, match="names several targets"):
        lambda_handler.handler(empty, Context())
    (emf,) = metrics_of(capsys.readouterr().out)
    assert emf["InvocationFailed"] == [1]
    monkeypatch.delenv("P13N_TARGET")
    with pytest.raises(ConfigError, match="P13N_TARGET"):
        lambda_handler.handler(empty, Context())

    monkeypatch.setenv("P13N_TARGET", "shop/store")
    for _ in range(3):
        assert lambda_handler.handler(empty, Context()) == {"batchItemFailures": []}
    assert FlakyInteractions.opened == 1
    loads = len(function["loads"])

    lambda_handler.reset()  # a new container
    assert lambda_handler.handler(empty, Context()) == {"batchItemFailures": []}
    assert len(function["loads"]) == loads + 1
    assert FlakyInteractions.opened == 2
