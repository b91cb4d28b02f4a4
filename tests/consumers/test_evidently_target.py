"""The ``evidently`` target against a fake endpoint that speaks Evidently's wire format and
checks SigV4 signatures: payload shape, batching, signing, and how each failure is classified.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from consumers.base import Deferred, Delivery
from consumers.deadletters import FileDeadLetterStore
from consumers.runner import GroupConsumer, RetryPolicy
from consumers.targets import TargetContext, build_target
from consumers.targets.evidently import EvidentlyTarget
from schemas.codec import EXPOSURE, INTERACTION, Codec
from schemas.config import Config, load_config
from schemas.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    NotFound,
    OperatorError,
    PermanentError,
    RetryableError,
    Throttled,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from schemas.records import new_record_id
from streams.base import UserRecord
from streams.checkpoints import SqliteCheckpointStore
from streams.embedded import EmbeddedReader
from tests.fixtures.fake_evidently import FakeEvidently, error, hang, partial
from tests.fixtures.servers import free_port

CODEC = Codec.packaged()
RECEIVED_MS = 1_700_000_000_123
TRACKED = "productDetailRecClicked"
UNTRACKED = "addedToCart"


def config_for(endpoint: str, **target: Any) -> Config:
    variations = {
        "sims": {"type": "local", "algorithm": "co-occurrence"},
        "similar-items": {"type": "local", "algorithm": "popularity"},
    }
    return load_config(
        {
            "namespaces": {
                "shop": {
                    "recommenders": {
                        "related-items": {
                            "similar": {
                                "experiments": {
                                    "product-detail-view": {
                                        "method": "evidently",
                                        "project": "my-store",
                                        "metrics": {
                                            TRACKED: {
                                                "trackExposures": True,
                                                "entityIdKey": "userDetails.userId",
                                                "valueKey": "details.productClicked",
                                            },
                                            UNTRACKED: {
                                                "entityIdKey": "userDetails.userId",
                                                "valueKey": "details.cartValue",
                                            },
                                        },
                                    }
                                },
                                "variations": variations,
                            }
                        },
                        "recommend-items": {
                            "for-you": {
                                "experiments": {
                                    "ranking": {
                                        "method": "local",
                                        "metrics": {
                                            "clicked": {
                                                "trackExposures": True,
                                                "entityIdKey": "userId",
                                                "valueKey": "clicked",
                                            }
                                        },
                                    }
                                },
                                "variations": variations,
                            }
                        },
                    },
                    "eventTargets": [
                        {
                            "type": "evidently",
                            "name": "evidently",
                            "project": "my-store",
                            "endpointUrl": endpoint,
                            **target,
                        }
                    ],
                }
            }
        }
    )


def interaction(user: str, *conversions: tuple[str, str, str, float | None]) -> dict[str, Any]:
    return {
        "recordId": new_record_id(),
        "namespace": "shop",
        "receivedAt": RECEIVED_MS,
        "partitionKeyField": "sessionId",
        "sessionId": f"s-{user}",
        "userId": user,
        "eventList": [],
        "experimentConversions": [
            {"recommender": r, "feature": f, "metric": m, "value": v} for r, f, m, v in conversions
        ],
        "context": {},
    }


def exposure(user: str, recommender: str = "similar", feature: str = "product-detail-view"):
    return {
        "recordId": new_record_id(),
        "namespace": "shop",
        "receivedAt": RECEIVED_MS,
        "partitionKeyField": "userId",
        "userId": user,
        "sessionId": None,
        "action": "related-items",
        "recommender": recommender,
        "feature": feature,
        "variation": "sims",
        "recommendationId": None,
    }


def delivery(fields: dict[str, Any], sequence: int = 0) -> Delivery:
    kind = EXPOSURE if "variation" in fields else INTERACTION
    data = CODEC.encode(kind, fields)
    record = UserRecord("shard-0", str(sequence), 0, fields["sessionId"] or "", data, RECEIVED_MS)
    return Delivery(record, kind, fields)


def clicked(user: str, value: float | None = None) -> Delivery:
    return delivery(interaction(user, ("similar", "product-detail-view", TRACKED, value)))


@pytest.fixture
def fake() -> Iterator[FakeEvidently]:
    server = FakeEvidently()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def target(aws_test_env: None, fake: FakeEvidently) -> Iterator[EvidentlyTarget]:
    yield from _opened(config_for(fake.url))


def _opened(config: Config, timeout: float = 5.0) -> Iterator[EvidentlyTarget]:
    built = EvidentlyTarget(
        config.namespaces["shop"].event_targets[0],
        TargetContext(config, CODEC),
        timeout=timeout,
    )
    built.open()
    try:
        yield built
    finally:
        built.close()


def data_of(event: dict[str, Any]) -> Any:
    return json.loads(event["data"])


# -- payload ------------------------------------------------------------------------------


def test_conversions_and_exposures_become_evidently_custom_events(target, fake):
    batch = [
        delivery(
            interaction(
                "u1",
                ("similar", "product-detail-view", TRACKED, None),
                ("similar", "product-detail-view", UNTRACKED, 42.5),
            )
        ),
        delivery(exposure("u2")),
    ]

    assert target.deliver(batch) == {}

    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call.project == "my-store"
    assert [e["type"] for e in call.events] == ["aws.evidently.custom"] * 3
    assert {e["timestamp"] for e in call.events} == {RECEIVED_MS / 1000}
    assert [data_of(e) for e in call.events] == [
        # a conversion without a value: the sample project's 1.0000001
        {"userDetails": {"userId": "u1"}, "details": {"productClicked": 1.0000001}},
        {"userDetails": {"userId": "u1"}, "details": {"cartValue": 42.5}},
        # an exposure: only for the metric with trackExposures
        {"userDetails": {"userId": "u2"}, "details": {"productClicked": 0.0000001}},
    ]


def test_experiments_not_on_evidently_and_unknown_names_send_nothing(target, fake):
    batch = [
        delivery(interaction("u1", ("for-you", "ranking", "clicked", 1.0))),  # method local
        delivery(exposure("u1", recommender="for-you", feature="ranking")),
        delivery(interaction("u1", ("similar", "gone-feature", TRACKED, 1.0))),
        delivery(interaction("u1")),  # events only, no conversions
    ]

    assert target.deliver(batch) == {}
    assert fake.calls == []


def test_nested_paths_merge_when_they_share_a_prefix():
    from consumers.targets.evidently import nested

    assert nested(("a.b.c", 1), ("a.b.d", 2), ("e", 3)) == {"a": {"b": {"c": 1, "d": 2}}, "e": 3}
    assert nested(("userId", "u"), ("clicked", 1.0)) == {"userId": "u", "clicked": 1.0}


# -- batching -----------------------------------------------------------------------------


def test_calls_carry_at_most_50_events_and_keep_a_records_events_together(target, fake):
    three = [
        delivery(
            interaction(
                f"u{i}",
                ("similar", "product-detail-view", TRACKED, 1.0),
                ("similar", "product-detail-view", UNTRACKED, 2.0),
                ("similar", "product-detail-view", TRACKED, 3.0),
            ),
            i,
        )
        for i in range(20)
    ]
    singles = [clicked(f"v{i}") for i in range(105)]

    assert target.deliver(three) == {}
    assert [len(c.events) for c in fake.calls] == [48, 12]  # 16 records, then 4

    fake.calls.clear()
    assert target.deliver(singles) == {}
    assert [len(c.events) for c in fake.calls] == [50, 50, 5]
    users = [data_of(e)["userDetails"]["userId"] for e in fake.events]
    assert users == [f"v{i}" for i in range(105)]  # in stream order


def test_a_record_of_more_than_50_events_is_split(target, fake):
    many = [("similar", "product-detail-view", TRACKED, float(i)) for i in range(60)]
    batch = [clicked("before"), delivery(interaction("big", *many)), clicked("after")]

    assert target.deliver(batch) == {}
    assert [len(c.events) for c in fake.calls] == [1, 50, 11]


# -- signing ------------------------------------------------------------------------------


def test_requests_are_sigv4_signed_for_evidently(aws_test_env, fake):
    config = config_for(fake.url, region="eu-west-1")
    for target in _opened(config):
        assert target.deliver([clicked("u1")]) == {}

    (call,) = fake.calls
    assert fake.rejected == []
    assert call.access_key == "testing"
    assert call.region == "eu-west-1"
    assert {"host", "x-amz-date", "content-type"} <= set(call.signed_headers)
    scope = call.headers["authorization"].split("Credential=")[1].split(",")[0]
    assert scope.endswith("/eu-west-1/evidently/aws4_request")


def test_a_wrong_signature_is_refused_as_permanent(target, fake):
    fake.secret_key = "not-what-the-client-has"

    failures = target.deliver([clicked("u1")])

    assert isinstance(failures[0], Forbidden)
    assert fake.rejected == ["InvalidSignatureException: signature does not match"]
    assert fake.events == []


# -- outcomes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (error(429, "ThrottlingException"), Throttled),
        (error(500, "InternalServerException"), UpstreamError),
        (error(503, "ServiceUnavailableException"), Unavailable),
        (error(400, "ValidationException"), InvalidRequest),
        (error(404, "ResourceNotFoundException"), NotFound),
        (error(403, "AccessDeniedException"), OperatorError),
        (error(409, "ConflictException"), InvalidRequest),
    ],
    ids=["429", "500", "503", "400", "404", "403", "409"],
)
def test_error_answers_are_classified(target, fake, answer, expected):
    fake.script.append(answer)

    failures = target.deliver([clicked("u1")])

    assert type(failures[0]) is expected
    retryable = expected in (Throttled, UpstreamError, Unavailable)
    assert isinstance(failures[0], RetryableError if retryable else PermanentError)
    assert failures[0].code == answer([])[1]["__type"]


def test_throttling_carries_retry_after(target, fake):
    fake.script.append(error(429, "ThrottlingException"))

    failures = target.deliver([clicked("u1")])

    assert failures[0].retry_after == 1.0


def test_a_timeout_is_retryable(aws_test_env, fake):
    fake.script.append(hang(2.0))
    for target in _opened(config_for(fake.url), timeout=0.3):
        failures = target.deliver([clicked("u1")])

    assert isinstance(failures[0], UpstreamTimeout)


def test_a_refused_connection_is_retryable(aws_test_env):
    for target in _opened(config_for(f"http://127.0.0.1:{free_port()}")):
        failures = target.deliver([clicked("u1")])

    assert isinstance(failures[0], Unavailable)


def test_after_a_retryable_failure_the_rest_of_the_batch_waits(target, fake):
    fake.script.append(error(503, "ServiceUnavailableException"))
    batch = [clicked(f"u{i}") for i in range(60)]  # two calls: 50 + 10

    failures = target.deliver(batch)

    assert len(fake.calls) == 1
    assert all(isinstance(failures[i], Unavailable) for i in range(50))
    assert all(type(failures[i]) is Deferred for i in range(50, 60))


def test_after_a_permanent_failure_the_rest_of_the_batch_is_sent(target, fake):
    fake.script.append(error(400, "ValidationException"))
    batch = [clicked(f"u{i}") for i in range(60)]

    failures = target.deliver(batch)

    assert sorted(failures) == list(range(50))
    assert all(isinstance(e, InvalidRequest) for e in failures.values())
    assert [len(c.events) for c in fake.calls] == [50, 10]
    assert len(fake.events) == 10


def test_failed_events_of_an_accepted_call_fail_only_their_records(target, fake):
    fake.script.append(partial({1, 3}))
    batch = [clicked(f"u{i}") for i in range(5)]

    failures = target.deliver(batch)

    assert sorted(failures) == [1, 3]
    assert all(isinstance(e, UpstreamError) for e in failures.values())


# -- wiring -------------------------------------------------------------------------------


def test_the_registry_builds_it_and_an_endpoint_is_required(aws_test_env, fake):
    config = config_for(fake.url)
    built = build_target(config.namespaces["shop"].event_targets[0], TargetContext(config, CODEC))
    assert isinstance(built, EvidentlyTarget)
    assert built.url == f"{fake.url}/projects/my-store/events"

    no_endpoint = (
        config.namespaces["shop"]
        .event_targets[0]
        .__class__(type="evidently", name="ev", namespace="shop", options={"project": "p"})
    )
    with pytest.raises(ConfigError, match="endpointUrl"):
        EvidentlyTarget(no_endpoint, TargetContext(config, CODEC))


def test_the_runner_retries_a_throttled_call_until_it_is_accepted(aws_test_env, fake, tmp_path):
    """End to end through the runner: records from the embedded stream, two 429s, then 200."""
    from streams.base import Entry
    from streams.embedded import EmbeddedWriter

    path = str(tmp_path / "stream.db")
    writer = EmbeddedWriter(path, shards=1)
    users = [f"u{i}" for i in range(7)]
    writer.put_batch(
        [
            Entry(
                f"s-{u}",
                CODEC.encode(
                    INTERACTION,
                    interaction(u, ("similar", "product-detail-view", TRACKED, None)),
                ),
            )
            for u in users
        ]
        + [Entry(f"s-{u}", CODEC.encode(EXPOSURE, exposure(u))) for u in users]
    )
    writer.close()
    fake.script.extend([error(429, "ThrottlingException"), error(429, "ThrottlingException")])
    config = config_for(fake.url)
    target_config = config.namespaces["shop"].event_targets[0]
    letters = FileDeadLetterStore(str(tmp_path / "dead"))
    consumer = GroupConsumer(
        target_config.group,
        "shop",
        EvidentlyTarget(target_config, TargetContext(config, CODEC)),
        EmbeddedReader(path),
        SqliteCheckpointStore(str(tmp_path / "checkpoints.db")),
        letters,
        CODEC,
        kinds=EvidentlyTarget.kinds,
        policy=RetryPolicy(base_delay=0.01, max_delay=0.05),
    )
    consumer.target.open()
    try:
        assert consumer.poll_once()
    finally:
        consumer.target.close()
        consumer.reader.close()
        consumer.checkpoints.close()

    assert [c.status for c in fake.calls] == [429, 429, 200]
    assert len(fake.events) == 14
    assert sorted(data_of(e)["details"]["productClicked"] for e in fake.events) == sorted(
        [1.0000001] * 7 + [0.0000001] * 7
    )
    assert list(letters.list(target_config.group)) == []
