"""The Personalize event-tracker target against a fake Personalize over real sockets.

The target builds, signs and sends real PutEvents requests (``consumers.targets.
personalize_wire``) to the fake (``tests.fixtures.fake_personalize``), which validates them as
the service does; boto3 and botocore are the reference the wire tests compare against (the same
body from ``put_events``, the same error classification from botocore's parser). Records go
through the real Avro codec first, so the target sees exactly what the runner would hand it.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.awsrequest import HeadersDict
from botocore.exceptions import ClientError
from botocore.parsers import create_parser
from botocore.serialize import Serializer

from aws.clients import client
from aws.errors import translate
from consumers.base import Deferred, Delivery
from consumers.targets import TargetContext, build_target
from consumers.targets.personalize import PersonalizeTarget
from consumers.targets.personalize_wire import (
    PutEventsClient,
    epoch_seconds,
    error_for,
    host_header,
)
from schemas.codec import INTERACTION, Codec
from schemas.config import TargetConfig, default_document, load_config
from schemas.errors import (
    InvalidRequest,
    NotFound,
    OperatorError,
    P13nError,
    PermanentError,
    RetryableError,
    Throttled,
    Unavailable,
    UpstreamError,
)
from schemas.records import new_record_id
from streams.base import UserRecord
from tests.fixtures.fake_personalize import SERVER_ERROR, THROTTLE, FakePersonalize
from tests.fixtures.servers import free_port

CODEC = Codec.packaged()
CONTEXT = TargetContext(load_config(default_document()), CODEC)
BASE_MS = 1_700_000_000_000


def event(event_id: str | None, **fields: Any) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "eventType": "View",
        "eventValue": None,
        "itemId": None,
        "impression": [],
        "properties": None,
        "recommendationId": None,
        "sentAt": BASE_MS,
        "metricAttribution": None,
        **fields,
    }


def record(
    session: str,
    events: Sequence[Mapping[str, Any]],
    *,
    user: str | None = None,
    conversions: Sequence[Mapping[str, Any]] = (),
    record_id: bytes | None = None,
) -> dict[str, Any]:
    return {
        "recordId": record_id or new_record_id(),
        "namespace": "shop",
        "receivedAt": BASE_MS,
        "partitionKeyField": "sessionId",
        "sessionId": session,
        "userId": user,
        "eventList": list(events),
        "experimentConversions": list(conversions),
        "context": {},
    }


def deliveries(records: Sequence[Mapping[str, Any]]) -> list[Delivery]:
    """As the runner hands them over: encoded to stream bytes, read back, decoded."""
    batch = []
    for n, fields in enumerate(records):
        data = CODEC.encode(INTERACTION, fields)
        kind, decoded = CODEC.decode(data)
        user_record = UserRecord("shard-0", str(n + 1), 0, fields["sessionId"], data, BASE_MS)
        batch.append(Delivery(user_record, kind, decoded))
    return batch


def one_event_records(session: str, count: int) -> list[dict[str, Any]]:
    return [record(session, [event(f"{session}-{n}")]) for n in range(count)]


@pytest.fixture
def make_target(fake_personalize: FakePersonalize) -> Iterator[Callable[..., PersonalizeTarget]]:
    """``make_target(**options)``: an opened target pointed at the fake, closed afterwards."""
    opened: list[PersonalizeTarget] = []

    def make(endpoint: str | None = None, **options: Any) -> PersonalizeTarget:
        config = TargetConfig(
            type="personalize-event-tracker",
            name="personalize",
            namespace="shop",
            options=MappingProxyType({"trackingId": fake_personalize.tracking_id, **options}),
            endpoint_url=endpoint or fake_personalize.endpoint,
            region="us-east-1",
        )
        target = build_target(config, CONTEXT)
        assert isinstance(target, PersonalizeTarget)
        target.open()
        opened.append(target)
        return target

    yield make
    for target in opened:
        target.close()


def sizes(fake: FakePersonalize, session: str | None = None) -> list[int]:
    return [len(c.event_ids) for c in fake.calls() if session in (None, c.session_id)]


# -- packing ------------------------------------------------------------------------------------


def test_consecutive_records_of_a_session_go_ten_events_to_a_call(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    target = make_target()

    failures = target.deliver(deliveries(one_event_records("s1", 25)))

    assert failures == {}
    assert sizes(fake_personalize) == [10, 10, 5]
    assert fake_personalize.event_ids() == [f"s1-{n}" for n in range(25)]
    assert {e.tracking_id for e in fake_personalize.events()} == {fake_personalize.tracking_id}


def test_a_call_holds_one_session_and_user_and_whole_records(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    # GIVEN an anonymous session that logs in, with records of three events each
    records = [record("s1", [event(f"anon-{n}-{k}") for k in range(3)]) for n in range(4)] + [
        record("s1", [event(f"known-{n}-{k}") for k in range(3)], user="u1") for n in range(2)
    ]
    target = make_target()

    failures = target.deliver(deliveries(records))

    # THEN a record's events are never spread over two calls, and the login starts a call
    assert failures == {}
    calls = fake_personalize.calls()
    assert [len(c.event_ids) for c in calls] == [9, 3, 6]
    assert ["userId" in c.request for c in calls] == [False, False, True]
    assert calls[2].request["userId"] == "u1"
    assert fake_personalize.event_ids() == [
        *(f"anon-{n}-{k}" for n in range(4) for k in range(3)),
        *(f"known-{n}-{k}" for n in range(2) for k in range(3)),
    ]


def test_interleaved_sessions_never_share_a_call_and_keep_their_order(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    rng = random.Random(7)
    counts = {"a": 23, "b": 9, "c": 31, "d": 1}
    queues = {s: one_event_records(s, n) for s, n in counts.items()}
    records = []
    while any(queues.values()):
        session = rng.choice([s for s, q in queues.items() if q])
        records.append(queues[session].pop(0))
    target = make_target()

    failures = target.deliver(deliveries(records))

    assert failures == {}
    calls = fake_personalize.calls()
    for call in calls:
        assert {str(event_id).split("-")[0] for event_id in call.event_ids} == {call.session_id}
    for session, count in counts.items():
        assert fake_personalize.event_ids(session) == [f"{session}-{n}" for n in range(count)]
        assert len(sizes(fake_personalize, session)) == math.ceil(count / 10)


def test_sessions_are_sent_in_parallel_and_each_session_in_sequence(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    fake_personalize.set_faults(latency=0.2)
    records = [r for s in ("a", "b", "c", "d") for r in one_event_records(s, 20)]
    target = make_target()

    started = time.monotonic()
    failures = target.deliver(deliveries(records))
    elapsed = time.monotonic() - started

    # two calls per session one after the other; four sessions side by side
    assert failures == {}
    assert fake_personalize.call_count() == 8
    assert 0.4 <= elapsed < 1.2


# -- what is sent -------------------------------------------------------------------------------


def test_events_reach_personalize_with_their_fields_and_deterministic_ids(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    record_id = new_record_id()
    full = event(
        None,
        eventType="Click",
        eventValue=2.5,
        itemId="item-7",
        impression=["item-7", "item-8"],
        properties='{"device": "ios", "n": 3}',
        recommendationId="RID-1",
        sentAt=BASE_MS + 123,
        metricAttribution={"eventAttributionSource": "email"},
    )
    bare = event("given-id", eventType="Purchase", sentAt=BASE_MS + 2_000)
    fields = record("s1", [full, bare], user="u1", record_id=record_id)
    target = make_target()

    assert target.deliver(deliveries([fields])) == {}
    assert target.deliver(deliveries([fields])) == {}  # redelivery, e.g. after a crash

    received = fake_personalize.events()
    assert [(e.session_id, e.user_id) for e in received] == [("s1", "u1")] * 4
    assert [e.event for e in received[:2]] == [
        {
            "eventId": f"{record_id.hex()}-0",
            "eventType": "Click",
            "eventValue": 2.5,
            "itemId": "item-7",
            "impression": ["item-7", "item-8"],
            "properties": '{"device": "ios", "n": 3}',
            "recommendationId": "RID-1",
            "sentAt": (BASE_MS + 123) / 1000,
            "metricAttribution": {"eventAttributionSource": "email"},
        },
        {"eventId": "given-id", "eventType": "Purchase", "sentAt": (BASE_MS + 2_000) / 1000},
    ]
    assert [e.event_id for e in received[2:]] == [f"{record_id.hex()}-0", "given-id"]


def test_conversions_are_not_sent_and_records_without_events_are_delivered(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    conversion = {"recommender": "r", "feature": "f", "metric": "m", "value": 1.0}
    records = [
        record("s1", [], user="u1", conversions=[conversion]),
        record("s2", [event("e1")], user="u2", conversions=[conversion]),
    ]
    target = make_target()

    failures = target.deliver(deliveries(records))

    assert failures == {}
    [call] = fake_personalize.calls()
    assert set(call.request) == {"trackingId", "sessionId", "userId", "eventList"}
    assert (call.session_id, call.event_ids) == ("s2", ("e1",))


# -- outcomes -----------------------------------------------------------------------------------


def test_a_throttled_call_is_retried_and_its_session_waits_behind_it(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    # GIVEN s1's second call throttled (records 10..19); s2 unaffected
    fake_personalize.set_faults(
        rule=lambda op, req: THROTTLE if req["eventList"][0]["eventId"] == "s1-10" else None
    )
    records = one_event_records("s1", 25) + one_event_records("s2", 5)
    target = make_target()

    failures = target.deliver(deliveries(records))

    # THEN the throttled call's records retry, s1's later records were not sent and wait
    assert sorted(failures) == list(range(10, 25))
    for index in range(10, 20):
        assert type(failures[index]) is Throttled
        assert failures[index].code == "ThrottlingException"
    for index in range(20, 25):
        assert isinstance(failures[index], Deferred)
        assert isinstance(failures[index], RetryableError)
    assert sizes(fake_personalize, "s1") == [10, 10]  # the third call was never made
    assert fake_personalize.event_ids("s1") == [f"s1-{n}" for n in range(10)]
    assert fake_personalize.event_ids("s2") == [f"s2-{n}" for n in range(5)]


@pytest.mark.parametrize("fault", [SERVER_ERROR, "lost_response"])
def test_a_server_error_is_retryable(
    fault: str, fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    fake_personalize.set_faults(rule=lambda op, req: fault if req["sessionId"] == "s1" else None)
    target = make_target()

    failures = target.deliver(deliveries(one_event_records("s1", 12)))

    assert sorted(failures) == list(range(12))
    assert all(type(failures[i]) is Unavailable for i in range(10))
    assert all(isinstance(failures[i], Deferred) for i in (10, 11))
    assert fake_personalize.call_count() == 1


def test_an_unreachable_service_is_retryable(
    make_target: Callable[..., PersonalizeTarget],
) -> None:
    target = make_target(endpoint=f"http://127.0.0.1:{free_port()}")

    failures = target.deliver(deliveries(one_event_records("s1", 12)))

    assert all(type(failures[i]) is Unavailable for i in range(10))
    assert all(isinstance(failures[i], Deferred) for i in (10, 11))


# what is wrong with the event → (its changed fields, faults set at the fake)
BAD_EVENTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "rejected by the service": ({}, {"invalid_event_ids": frozenset({"s1-4"})}),
    "properties too long": ({"properties": json.dumps({"k": "x" * 1020})}, {}),
    "properties not an object": ({"properties": "[1, 2]"}, {}),
    "recommendationId too long": ({"recommendationId": "r" * 41}, {}),
    "too many impressions": ({"impression": [f"i{n}" for n in range(26)]}, {}),
}


@pytest.mark.parametrize("bad", BAD_EVENTS)
def test_an_invalid_event_in_a_packed_call_fails_only_its_record(
    bad: str, fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    # GIVEN 15 records of one session, the fifth of which Personalize refuses
    changes, faults = BAD_EVENTS[bad]
    fake_personalize.set_faults(**faults)
    records = one_event_records("s1", 15)
    records[4]["eventList"][0].update(changes)
    target = make_target()

    failures = target.deliver(deliveries(records))

    # THEN only that record is permanent; its neighbours arrive, in order
    assert list(failures) == [4]
    assert type(failures[4]) is InvalidRequest
    assert failures[4].code == "InvalidInputException"
    assert fake_personalize.event_ids() == [f"s1-{n}" for n in range(15) if n != 4]
    # the rejected packed call, each of its records alone, then packing resumes
    assert sizes(fake_personalize) == [10, *[1] * 10, 5]


def test_a_record_whose_own_event_is_invalid_fails_as_a_whole(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    fake_personalize.set_faults(invalid_event_ids=frozenset({"r1-b"}))
    records = [
        record("s1", [event("r0-a")]),
        record("s1", [event("r1-a"), event("r1-b"), event("r1-c")]),
        record("s1", [event("r2-a")]),
    ]
    target = make_target()

    failures = target.deliver(deliveries(records))

    assert list(failures) == [1]
    assert isinstance(failures[1], PermanentError)
    assert fake_personalize.event_ids() == ["r0-a", "r2-a"]


def test_an_unknown_tracking_id_fails_every_record_without_splitting(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    target = make_target(trackingId="no-such-tracker")
    records = [r for s in ("a", "b", "c") for r in one_event_records(s, 12)]

    failures = target.deliver(deliveries(records))

    assert sorted(failures) == list(range(36))
    assert all(type(error) is NotFound for error in failures.values())
    assert {error.code for error in failures.values()} == {"ResourceNotFoundException"}
    assert fake_personalize.events() == []
    assert fake_personalize.call_count() <= 3  # at most one call per session


# -- pacing -------------------------------------------------------------------------------------


def test_max_calls_per_second_is_never_exceeded_and_nearly_reached(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    rate, calls = 50, 150
    target = make_target(maxCallsPerSecond=rate)
    records = [record(f"s{n}", [event(f"e{n}")]) for n in range(calls)]  # one call each

    started = time.monotonic()
    failures = target.deliver(deliveries(records))
    elapsed = time.monotonic() - started

    assert failures == {}
    assert fake_personalize.call_count() == calls
    # A quota: never more than `rate` calls in any 1-second window, as the server counts them.
    assert fake_personalize.max_calls_per_second() <= rate
    assert fake_personalize.max_calls_per_second() >= 0.9 * rate
    assert calls / elapsed >= 0.8 * rate


# -- the wire: our PutEvents request is botocore's ----------------------------------------------

SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[a-z0-9-]+)/"
    r"(?P<service>[a-z-]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


@pytest.mark.parametrize("token", [None, "session-token"])
def test_requests_are_signed_with_sigv4_and_accepted(
    token: str | None,
    monkeypatch: pytest.MonkeyPatch,
    fake_personalize: FakePersonalize,
    make_target: Callable[..., PersonalizeTarget],
) -> None:
    if token is not None:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    target = make_target()

    assert target.deliver(deliveries(one_event_records("s1", 1))) == {}

    [call] = fake_personalize.accepted_calls()
    headers = call.headers
    signed = SIGV4.fullmatch(headers["authorization"])
    assert signed is not None, headers["authorization"]
    assert signed["key"] == os.environ["AWS_ACCESS_KEY_ID"]
    assert (signed["region"], signed["service"]) == ("us-east-1", "personalize")
    assert headers["x-amz-date"].startswith(signed["day"])
    expected = {"content-type", "host", "x-amz-date"} | (
        {"x-amz-security-token"} if token else set()
    )
    assert set(signed["signed"].split(";")) == expected
    assert headers["host"] == fake_personalize.endpoint.removeprefix("http://")
    assert headers["content-type"] == "application/json"
    assert headers.get("x-amz-security-token") == token


def test_the_request_body_is_the_one_boto3_sends(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    # GIVEN events with every field, sent at a whole second and at a fraction of one
    full = event(
        "e-full",
        eventType="Click",
        eventValue=2.5,
        itemId="item-7",
        impression=["item-7", "item-8"],
        properties='{"device": "ios", "n": 3}',
        recommendationId="RID-1",
        sentAt=BASE_MS + 123,
        metricAttribution={"eventAttributionSource": "email"},
    )
    whole = event("e-whole", sentAt=BASE_MS + 5_000, itemId="ünïcode-ø")
    target = make_target()
    assert target.deliver(deliveries([record("s1", [full, whole], user="u1")])) == {}

    # WHEN boto3 sends the same call
    boto3_events = []
    for sent in fake_personalize.events():
        fields = dict(sent.event)
        fields["sentAt"] = datetime.fromtimestamp(fields["sentAt"], UTC)
        boto3_events.append(fields)
    runtime = client("personalize-events", endpoint_url=fake_personalize.endpoint, max_attempts=1)
    runtime.put_events(
        trackingId=fake_personalize.tracking_id,
        sessionId="s1",
        userId="u1",
        eventList=boto3_events,
    )

    # THEN the fake received the same document, number types included
    ours, theirs = (call.request for call in fake_personalize.accepted_calls())
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    assert [type(e["sentAt"]) for e in ours["eventList"]] == [float, int]


@pytest.mark.parametrize("millis", [0, 1, 999, 1_000, BASE_MS, BASE_MS + 123, BASE_MS + 3_691])
def test_sent_at_is_serialised_as_botocore_serialises_a_timestamp(millis: int) -> None:
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)
    expected = Serializer()._timestamp_unixtimestamp(stamp)

    assert epoch_seconds(millis) == expected
    assert type(epoch_seconds(millis)) is type(expected)


# (status, x-amzn-ErrorType header, body) of an error answer → the p13n error class
ERROR_ANSWERS: dict[str, tuple[int, str | None, bytes, type[P13nError]]] = {
    "throttled": (400, None, b'{"__type": "ThrottlingException", "message": "Rate"}', Throttled),
    "throttled, by header": (
        400,
        "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/",
        b"{}",
        Throttled,
    ),
    "invalid input, namespaced": (
        400,
        None,
        b'{"__type": "com.amazonaws.personalize#InvalidInputException", "message": "bad"}',
        InvalidRequest,
    ),
    "validation": (400, None, b'{"message": "no", "code": "ValidationException"}', InvalidRequest),
    "unknown tracker": (404, "ResourceNotFoundException", b'{"message": "gone"}', NotFound),
    "access denied": (
        403,
        None,
        b'{"Message": "no", "__type": "AccessDeniedException"}',
        OperatorError,  # issue 13: permissions are the operator's to fix, never dead-lettered
    ),
    "internal failure": (500, None, b'{"__type": "InternalFailure"}', Unavailable),
    "bad gateway, not JSON": (502, None, b"<html>Bad Gateway</html>", UpstreamError),
    "unavailable, no body": (503, None, b"", Unavailable),
    "too many requests, no body": (429, None, b"", Throttled),
}


@pytest.mark.parametrize("answer", ERROR_ANSWERS)
def test_error_answers_map_as_botocore_errors_did(answer: str) -> None:
    status, error_type, body, expected = ERROR_ANSWERS[answer]
    headers = HeadersDict({"Content-Type": "application/json"})
    if error_type is not None:
        headers["x-amzn-ErrorType"] = error_type
    what = "personalize PutEvents (shop/personalize)"

    ours = error_for(status, error_type, body, what)

    # the same answer parsed by botocore into a ClientError, translated as before
    operation = botocore.session.get_session().get_service_model("personalize-events")
    parsed = create_parser("rest-json").parse(
        {"status_code": status, "headers": headers, "body": body},
        operation.operation_model("PutEvents").output_shape,
    )
    theirs = translate(ClientError(parsed, "PutEvents"), what)  # type: ignore[arg-type]
    assert type(ours) is type(theirs) is expected
    assert (ours.code, ours.message) == (theirs.code, theirs.message)


def test_the_endpoint_is_resolved_the_standard_way(
    monkeypatch: pytest.MonkeyPatch, fake_personalize: FakePersonalize
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", raising=False)
    config = TargetConfig(
        type="personalize-event-tracker",
        name="personalize",
        namespace="shop",
        options=MappingProxyType({"trackingId": fake_personalize.tracking_id}),
        region="eu-west-1",
    )
    default = PutEventsClient(config)
    default.open()
    default.close()
    assert default.url == "https://personalize-events.eu-west-1.amazonaws.com/events"

    monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", fake_personalize.endpoint)
    target = build_target(config, CONTEXT)
    target.open()
    try:
        assert target.deliver(deliveries(one_event_records("s1", 3))) == {}
    finally:
        target.close()
    assert fake_personalize.event_ids() == ["s1-0", "s1-1", "s1-2"]


def test_a_connection_the_server_closed_is_not_reused(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    target = make_target()
    assert target.deliver(deliveries(one_event_records("s1", 1))) == {}
    # the server ends the idle keep-alive connection (as after its idle timeout)
    client = target._client
    assert client is not None
    for connection in client._idle:
        sock = connection.sock
        assert sock is not None
        sock.shutdown(socket.SHUT_RD)  # what a close by the peer looks like to select()

    assert target.deliver(deliveries(one_event_records("s2", 1))) == {}
    assert fake_personalize.event_ids() == ["s1-0", "s2-0"]


# -- the runner's loop --------------------------------------------------------------------------


def test_resending_retryable_failures_delivers_every_event_with_sessions_in_order(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    # GIVEN 8 interleaved sessions, and a service that throttles 30% of calls, fails 5% with
    # 500 and loses the answer of 5% more (after recording their events)
    fake_personalize.set_faults(throttle=0.30, server_error=0.05, lost_response=0.05)
    rng = random.Random(11)
    sessions = [f"s{n}" for n in range(8)]
    records = []
    for n in range(200):
        session = rng.choice(sessions)
        events = [event(f"{session}-{n}-{k}") for k in range(rng.randint(1, 3))]
        records.append(record(session, events, user=f"u-{session}"))
    batch = deliveries(records)
    target = make_target()

    # WHEN deliver is called like the runner does: the failed subset again, in order
    pending = list(range(len(batch)))
    rounds = 0
    while pending:
        rounds += 1
        assert rounds <= 200, f"{len(pending)} records still failing"
        failures = target.deliver([batch[i] for i in pending])
        assert all(isinstance(error, RetryableError) for error in failures.values())
        pending = [pending[j] for j in sorted(failures)]

    # THEN every event arrived at least once, and each session's first arrivals are in order
    first_seen: dict[str, list[str]] = {s: [] for s in sessions}
    seen: set[str] = set()
    for received in fake_personalize.events():
        if received.event_id not in seen:
            seen.add(str(received.event_id))
            first_seen[received.session_id].append(str(received.event_id))
    for session in sessions:
        expected = [
            e["eventId"] for r in records if r["sessionId"] == session for e in r["eventList"]
        ]
        assert first_seen[session] == expected
    errors = {c.error for c in fake_personalize.calls()}
    assert {"ThrottlingException", "InternalFailure"} <= errors
    assert rounds > 1


# -- the fake's query side (used by the query path's tests) -------------------------------------


def test_the_fake_answers_recommendations_and_rankings_through_boto3(
    fake_personalize: FakePersonalize,
) -> None:
    runtime = client("personalize-runtime", endpoint_url=fake_personalize.endpoint, max_attempts=1)
    default = "arn:aws:personalize:us-east-1:000000000000:campaign/default"
    chosen = "arn:aws:personalize:us-east-1:000000000000:recommender/chosen"
    fake_personalize.add_campaign(default)
    fake_personalize.add_campaign(chosen, items=["x", "y", "z"])

    first = runtime.get_recommendations(campaignArn=default, userId="u1", numResults=5)
    again = runtime.get_recommendations(campaignArn=default, userId="u1", numResults=5)
    assert len(first["itemList"]) == 5
    assert first["itemList"] == again["itemList"]
    assert first["recommendationId"] == again["recommendationId"]

    related = runtime.get_recommendations(recommenderArn=chosen, itemId="y")
    assert [i["itemId"] for i in related["itemList"]] == ["x", "z"]

    ranked = runtime.get_personalized_ranking(
        campaignArn=chosen, userId="u1", inputList=["q", "z", "x"]
    )
    assert [i["itemId"] for i in ranked["personalizedRanking"]] == ["x", "z", "q"]

    with pytest.raises(ClientError) as missing:
        runtime.get_recommendations(campaignArn=default + "-gone", userId="u1")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert fake_personalize.call_count("GetRecommendations") == 4


def test_event_value_goes_out_as_the_client_wrote_it_not_widened_from_float32(
    fake_personalize: FakePersonalize, make_target: Callable[..., PersonalizeTarget]
) -> None:
    # GIVEN an eventValue as the Avro float field hands it back: 4.99 widened from 32 bits
    widened = struct.unpack("<f", struct.pack("<f", 4.99))[0]
    assert widened != 4.99
    fields = record("s1", [event("e-1", eventValue=widened)], user="u1")

    # WHEN it is delivered
    assert make_target().deliver(deliveries([fields])) == {}

    # THEN Personalize gets 4.99, as the sample-json targets write it
    assert [e.event["eventValue"] for e in fake_personalize.events()] == [4.99]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:8080/events", "127.0.0.1:8080"),
        (
            "https://Personalize-Events.us-east-1.amazonaws.com/",
            "personalize-events.us-east-1.amazonaws.com",
        ),
        ("https://h.example:443/", "h.example"),
        ("http://h.example:80/", "h.example"),
        ("https://h.example:80/", "h.example:80"),
        ("http://[::1]:9000/events", "[::1]:9000"),
        ("https://user:pw@Host.Example:8443/p", "host.example:8443"),
    ],
)
def test_the_signed_host_is_the_one_botocore_signs(url: str, host: str) -> None:
    assert host_header(urlsplit(url)) == host
