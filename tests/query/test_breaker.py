"""The circuit breaker: its states on a clock the test moves, what counts as a failure, and,
against the service process and a backend of every resolver kind, that requests the backend
refuses never open it while the backend's own failures do."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from query.breaker import Breaker, is_backend_failure
from query.resolvers.remote import MAX_ATTEMPTS
from schemas.errors import (
    InvalidRequest,
    NotFound,
    P13nError,
    Throttled,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from tests.fixtures.fake_lambda import FakeLambda
from tests.fixtures.fake_personalize import FakePersonalize
from tests.fixtures.fake_recommender import FakeRecommender
from tests.fixtures.fake_sagemaker import FakeSageMaker, ModelAnswer
from tests.fixtures.service import Service


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_then_half_opens_for_one_trial() -> None:
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "closed"
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_after() == 10
    clock.now += 10
    assert breaker.state == "half-open"
    assert breaker.allow()  # the one trial call
    assert not breaker.allow()  # nobody else while it runs
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def test_failed_trial_opens_again_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.allow()
    breaker.failed()
    assert breaker.state == "open" and breaker.retry_after() == 5


def test_success_resets_the_count_and_throttling_does_not_count() -> None:
    breaker = Breaker(threshold=2, cooldown=5, clock=Clock())
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state == "closed"
    breaker.released()  # throttled: says nothing about health
    assert breaker.state == "closed" and breaker.allow()


# -- what counts, over real sockets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (UpstreamTimeout("slow"), True),
        (UpstreamError("refused connection", code="Unreachable"), True),
        (UpstreamError("garbage", code="BadResponse"), True),
        (UpstreamError("function raised", code="FunctionError"), True),
        (UpstreamError("HTTP 500", code="HTTP500", backend_status=500), True),
        (UpstreamError("HTTP 503", code="HTTP503", backend_status=503), True),
        (UpstreamError("HTTP 408", code="HTTP408", backend_status=408), True),
        (UpstreamError("model failed", code="ModelError", backend_status=424), True),
        (Unavailable("stream"), True),
        (UpstreamError("HTTP 400", code="HTTP400", backend_status=400), False),
        (UpstreamError("no filter", code="ResourceNotFoundException", backend_status=404), False),
        (UpstreamError("bad", code="InvalidInputException", backend_status=400), False),
        (InvalidRequest("bad filter name", code="InvalidFilterParameter"), False),
        (NotFound("gone"), False),
        (Throttled("slow down", retry_after=1), False),
    ],
)
def test_only_the_backends_own_failures_count(error: P13nError, counts: bool) -> None:
    assert is_backend_failure(error) is counts
    breaker = Breaker(threshold=1, cooldown=5, clock=Clock())
    breaker.ended(error)
    assert breaker.state == ("open" if counts else "closed")


def test_a_refused_trial_lets_the_next_trial_out() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.allow()
    breaker.ended(InvalidRequest("bad filter name"))
    assert breaker.state == "half-open" and breaker.allow()


# -- over real sockets: the service process and one backend of each kind ------------------------

ServiceFactory = Callable[..., Service]
CAMPAIGN = "arn:aws:personalize:us-east-1:111122223333:campaign/picks"
THRESHOLD = 5  # the service's breaker: five consecutive failures open it
TRIES = THRESHOLD + 3
_users = (f"user-{n}" for n in itertools.count())


class Backends:
    """One backend of every remote resolver kind, each told to refuse, fail or answer."""

    def __init__(
        self,
        personalize: FakePersonalize,
        sagemaker: FakeSageMaker,
        lambda_: FakeLambda,
        http: FakeRecommender,
    ) -> None:
        self.personalize, self.sagemaker, self.lambda_, self.http = (
            personalize,
            sagemaker,
            lambda_,
            http,
        )
        self.model_mode = "answer"  # the SageMaker model: answer | refuse | fail
        personalize.add_campaign(CAMPAIGN, [f"sku-{n}" for n in range(30)])
        sagemaker.add_endpoint("ranker", self._model)
        self.function_arn = lambda_.add_function("picks", self._function)

    def _model(self, body: Any) -> Any:
        if self.model_mode == "refuse":
            raise ModelAnswer(400, "unknown filter")
        if self.model_mode == "fail":
            raise RuntimeError("out of memory")
        return {"itemList": [{"itemId": "m-1"}, {"itemId": "m-2"}]}

    @staticmethod
    def _function(event: Any) -> Any:
        return {"itemList": [{"itemId": "f-1"}, {"itemId": "f-2"}]}

    def config(self) -> dict[str, Any]:
        def one(variation: dict[str, Any]) -> dict[str, Any]:
            return {"variations": {"v": {"timeoutMs": 3000, **variation}}}

        recommenders = {
            "personalize": one(
                {
                    "type": "personalize-campaign",
                    "arn": CAMPAIGN,
                    "endpointUrl": self.personalize.endpoint,
                }
            ),
            "sagemaker": one(
                {
                    "type": "sagemaker",
                    "endpointName": "ranker",
                    "endpointUrl": self.sagemaker.endpoint,
                }
            ),
            "lambda": one(
                {
                    "type": "lambda",
                    "arn": self.function_arn,
                    "endpointUrl": self.lambda_.endpoint,
                }
            ),
            "http": one(
                {"type": "http", "url": self.http.url + "/recs/{userId}?n={numResults}&f={filter}"}
            ),
            "local": one({"type": "local"}),
        }
        return {
            "cacheControl": {},
            "namespaces": {"shop": {"recommenders": {"recommend-items": recommenders}}},
        }


@pytest.fixture
def backends(
    fake_personalize: FakePersonalize,
    fake_sagemaker: FakeSageMaker,
    fake_lambda: FakeLambda,
    fake_recommender: FakeRecommender,
) -> Iterator[Backends]:
    yield Backends(fake_personalize, fake_sagemaker, fake_lambda, fake_recommender)


def ask(client: httpx.Client, recommender: str, query: str = "") -> httpx.Response:
    return client.get(f"/recommend-items/shop/{recommender}/{next(_users)}?{query}")


def refused_then_answered(
    client: httpx.Client, recommender: str, query: str, status: int, code: str
) -> None:
    """More refused requests than the breaker's threshold, each answered with the refusal
    itself (never 503 CircuitOpen), then a good request answered by the backend."""
    for _ in range(TRIES):
        reply = ask(client, recommender, query)
        assert reply.status_code == status, reply.text
        assert reply.json()["code"] == code
    reply = ask(client, recommender)
    assert reply.status_code == 200, reply.text
    assert reply.json()["itemList"]


def failures_open_it(client: httpx.Client, recommender: str) -> None:
    """The control: the backend's own failures still open the breaker after the threshold."""
    for _ in range(THRESHOLD):
        assert ask(client, recommender).status_code in (502, 504)
    reply = ask(client, recommender)
    assert reply.status_code == 503, reply.text
    assert reply.json()["code"] == "CircuitOpen" and int(reply.headers["retry-after"]) >= 1


def test_refused_requests_never_open_the_breaker_of_any_resolver_kind(
    service_factory: ServiceFactory, backends: Backends
) -> None:
    service = service_factory(backends.config(), extra_args=("--no-consumers",))
    with service.client() as client:
        # personalize: a filter name p13n refuses, then filter values Personalize refuses
        refused_then_answered(
            client, "personalize", "filter=bad!name", 400, "InvalidFilterParameter"
        )
        values = "{" + ",".join(f'"v{n}":"x"' for n in range(26)) + "}"
        refused_then_answered(
            client,
            "personalize",
            f"filter=good&filterValues={values}",
            502,
            "InvalidInputException",
        )
        # sagemaker: the model answers 400 (SageMaker's ModelError, OriginalStatusCode 400)
        backends.model_mode = "refuse"
        for _ in range(TRIES):
            reply = ask(client, "sagemaker", "filter=bad!name")
            assert reply.status_code == 502 and reply.json()["code"] == "ModelError"
        backends.model_mode = "answer"
        assert ask(client, "sagemaker").status_code == 200
        # lambda: the Lambda service refuses the invocation (400, not retried by botocore)
        backends.lambda_.fail_next("InvalidRequestContentException", 400, times=TRIES)
        refused_then_answered(
            client, "lambda", "filter=bad!name", 502, "InvalidRequestContentException"
        )
        # http: the recommendation service answers 400
        backends.http.set(status=400)
        for _ in range(TRIES):
            reply = ask(client, "http", "filter=bad!name")
            assert reply.status_code == 502 and reply.json()["code"] == "HTTP400"
        backends.http.set(status=200)
        assert ask(client, "http").status_code == 200
        # local: every refusal happens before the recommender; none reaches the breaker
        for query in ("numResults=0", "context={oops", "filterValues=[1]", "numResults=x"):
            for _ in range(2):
                assert ask(client, "local", query).status_code == 400
        assert ask(client, "local", "filter=bad!name").status_code == 200

        # The control, for every remote kind: the backend's own failures do open it.
        backends.personalize.set_faults(server_error=1.0)
        failures_open_it(client, "personalize")
        backends.model_mode = "fail"
        failures_open_it(client, "sagemaker")
        backends.lambda_.fail_next("ServiceException", 500, times=THRESHOLD * MAX_ATTEMPTS)
        failures_open_it(client, "lambda")
        backends.http.set(status=500)
        failures_open_it(client, "http")
        # ... and only the failing variation's: local still answers
        assert ask(client, "local").status_code == 200
