"""The Personalize resolver against the fake Personalize runtime over real sockets: what boto3
puts on the wire (as the fake received it) and what the resolver makes of the answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from query.base import Query
from schemas.errors import (
    ConfigError,
    InvalidRequest,
    Throttled,
    UpstreamError,
    UpstreamTimeout,
)
from tests.fixtures.fake_personalize import FakePersonalize
from tests.fixtures.servers import free_port
from tests.query.resolver_support import failure, make_resolver, query, resolve

CAMPAIGN = "arn:aws:personalize:us-east-1:111122223333:campaign/picks"
RECOMMENDER = "arn:aws:personalize:eu-west-1:444455556666:recommender/top-picks"
PLACEHOLDER = "arn:aws:personalize:[REGION]:[ACCOUNT]:campaign/picks"
CATALOG = [f"sku-{n}" for n in range(1, 31)]
FOR_YOU = "recommend-items"
RELATED = "related-items"
RERANK = "rerank-items"


def campaign(fake: FakePersonalize, arn: str = CAMPAIGN, **extra: Any) -> dict[str, Any]:
    fake.add_campaign(arn, CATALOG)
    kind = "personalize-recommender" if ":recommender/" in arn else "personalize-campaign"
    return {"type": kind, "arn": arn, "endpointUrl": fake.endpoint, **extra}


def sent(fake: FakePersonalize, operation: str = "GetRecommendations") -> dict[str, Any]:
    [call] = fake.calls(operation)
    return dict(call.request)


def test_recommend_items_asks_the_campaign_for_the_user(fake_personalize: FakePersonalize) -> None:
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize))
    [answer] = resolve(resolver, query(FOR_YOU, user_id="u1", num_results=3))
    assert sent(fake_personalize) == {"campaignArn": CAMPAIGN, "userId": "u1", "numResults": 3}
    assert [item["itemId"] for item in answer.items] == ["sku-1", "sku-2", "sku-3"]
    assert answer.items[0] == {"itemId": "sku-1", "score": 0.5}
    assert answer.recommendation_id is not None
    assert answer.recommendation_id.startswith("RID-")
    assert dict(answer.extra) == {}  # boto's ResponseMetadata is not the backend's answer


def test_recommender_arn_and_related_items(fake_personalize: FakePersonalize) -> None:
    resolver = make_resolver(RELATED, campaign(fake_personalize, RECOMMENDER))
    [with_user, without] = resolve(
        resolver,
        query(RELATED, item_id="sku-2", user_id="u1", num_results=2),
        query(RELATED, item_id="sku-2", num_results=2),
    )
    first, second = (dict(c.request) for c in fake_personalize.calls("GetRecommendations"))
    assert first == {
        "recommenderArn": RECOMMENDER,
        "userId": "u1",
        "itemId": "sku-2",
        "numResults": 2,
    }
    assert second == {"recommenderArn": RECOMMENDER, "itemId": "sku-2", "numResults": 2}
    assert [i["itemId"] for i in with_user.items] == ["sku-1", "sku-3"]  # the seed left out
    assert without.items == with_user.items


def test_rerank_items_uses_personalized_ranking(fake_personalize: FakePersonalize) -> None:
    resolver = make_resolver(RERANK, campaign(fake_personalize))
    ids = ("sku-9", "sku-1", "sku-5")
    [answer] = resolve(resolver, query(RERANK, user_id="u1", item_ids=ids, num_results=2))
    assert sent(fake_personalize, "GetPersonalizedRanking") == {
        "campaignArn": CAMPAIGN,
        "userId": "u1",
        "inputList": list(ids),
    }
    assert answer.body("personalizedRanking")["personalizedRanking"] == [
        {"itemId": "sku-1", "score": 0.5},
        {"itemId": "sku-5", "score": 0.333333},
    ]  # the best two of the three: at most num_results


def test_a_domain_recommender_cannot_rerank(fake_personalize: FakePersonalize) -> None:
    with pytest.raises(ConfigError, match="campaigns only"):
        make_resolver(RERANK, campaign(fake_personalize, RECOMMENDER))


def test_num_results_never_above_500(fake_personalize: FakePersonalize) -> None:
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize))
    fake_personalize.add_campaign(CAMPAIGN)  # the default catalog: 200 items
    [answer] = resolve(resolver, query(FOR_YOU, user_id="u1", num_results=900))
    assert sent(fake_personalize)["numResults"] == 500
    assert len(answer.items) == 200


def test_context_and_metadata_columns(fake_personalize: FakePersonalize) -> None:
    variation = campaign(
        fake_personalize,
        inferenceItemMetadata={"type": "personalize", "itemColumns": ["TITLE", "PRICE"]},
    )
    resolver = make_resolver(FOR_YOU, variation)
    context = {"DEVICE": "Phone", "HOUR": "7"}
    [answer] = resolve(resolver, query(FOR_YOU, user_id="u1", num_results=1, context=context))
    request = sent(fake_personalize)
    assert request["context"] == context
    assert request["metadataColumns"] == {"ITEMS": ["TITLE", "PRICE"]}
    assert answer.items == (
        {
            "itemId": "sku-1",
            "score": 0.5,
            "metadata": {"TITLE": "TITLE:sku-1", "PRICE": "PRICE:sku-1"},
        },
    )


def test_no_metadata_columns_for_other_metadata_sources(fake_personalize: FakePersonalize) -> None:
    variation = campaign(fake_personalize, inferenceItemMetadata={"type": "localdb"})
    resolve(make_resolver(FOR_YOU, variation), query(FOR_YOU, user_id="u1"))
    assert "metadataColumns" not in sent(fake_personalize)


FILTERS = [
    {
        "arn": "arn:aws:personalize:us-east-1:111122223333:filter/for-this-user",
        "condition": "user-required",
        "autoDynamicFilterValues": {
            "CHANNEL": {
                "type": "string",
                "evaluateAll": True,
                "rules": [
                    {"type": "header-value", "header": "x-channel"},
                    {"type": "header-value", "header": "x-second-channel"},
                ],
            },
            "MAXPRICE": {
                "type": "integer",
                "rules": [{"type": "header-value", "header": "x-max-price"}],
            },
        },
    },
    {"arn": "arn:aws:personalize:us-east-1:111122223333:filter/anyone"},
]


def test_first_filter_whose_condition_holds(fake_personalize: FakePersonalize) -> None:
    resolver = make_resolver(RELATED, campaign(fake_personalize), filters=FILTERS)
    headers = {"x-channel": "web", "x-second-channel": "app", "x-max-price": "40"}
    resolve(
        resolver,
        query(RELATED, item_id="sku-1", user_id="u1", headers=headers),
        query(RELATED, item_id="sku-1", headers=headers),
    )
    with_user, anonymous = (dict(c.request) for c in fake_personalize.calls("GetRecommendations"))
    assert with_user["filterArn"].endswith(":filter/for-this-user")
    # string values quoted and comma-separated, numbers plain: Personalize's format
    assert with_user["filterValues"] == {"CHANNEL": '"web","app"', "MAXPRICE": "40"}
    assert anonymous["filterArn"].endswith(":filter/anyone")
    assert "filterValues" not in anonymous


def test_callers_filter_values_override_derived_ones(fake_personalize: FakePersonalize) -> None:
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize, filters=FILTERS))
    resolve(
        resolver,
        query(
            FOR_YOU,
            user_id="u1",
            headers={"x-channel": "web", "x-max-price": "40"},
            filter_values={"MAXPRICE": "15", "GENRE": '"drama"'},
        ),
    )
    assert sent(fake_personalize)["filterValues"] == {
        "CHANNEL": '"web"',
        "MAXPRICE": "15",
        "GENRE": '"drama"',
    }


def test_no_filter_applies_without_a_matching_condition(fake_personalize: FakePersonalize) -> None:
    resolver = make_resolver(RELATED, campaign(fake_personalize, filters=FILTERS[:1]))
    resolve(resolver, query(RELATED, item_id="sku-1", num_results=1))
    request = sent(fake_personalize)
    assert "filterArn" not in request and "filterValues" not in request


def test_filter_name_takes_region_and_account_from_a_real_arn(
    fake_personalize: FakePersonalize,
) -> None:
    resolver = make_resolver(RELATED, campaign(fake_personalize, RECOMMENDER), filters=FILTERS)
    resolve(
        resolver,
        query(RELATED, item_id="sku-1", user_id="u1", filter="cheap", filter_values={"P": "3"}),
    )
    request = sent(fake_personalize)
    # the named filter replaces the configured ones, values and all
    assert request["filterArn"] == "arn:aws:personalize:eu-west-1:444455556666:filter/cheap"
    assert request["filterValues"] == {"P": "3"}


def test_filter_name_with_placeholder_arn_uses_the_options(
    fake_personalize: FakePersonalize,
) -> None:
    variation = campaign(
        fake_personalize, PLACEHOLDER, region="ap-southeast-2", accountId="777788889999"
    )
    resolve(make_resolver(FOR_YOU, variation), query(FOR_YOU, user_id="u1", filter="cheap"))
    assert sent(fake_personalize)["filterArn"] == (
        "arn:aws:personalize:ap-southeast-2:777788889999:filter/cheap"
    )


def test_filter_may_be_a_filter_arn_used_as_it_is(fake_personalize: FakePersonalize) -> None:
    arn = "arn:aws:personalize:eu-central-1:999988887777:filter/cheap-items"
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize, filters=FILTERS))
    resolve(resolver, query(FOR_YOU, user_id="u1", filter=arn, filter_values={"P": "3"}))
    request = sent(fake_personalize)
    assert (request["filterArn"], request["filterValues"]) == (arn, {"P": "3"})


@pytest.mark.parametrize(
    "bad",
    ["bad!name", "arn:aws:personalize:eu-central-1:999988887777:campaign/x", "a/../b", "-lead"],
)
def test_a_filter_neither_name_nor_arn_is_a_400(
    fake_personalize: FakePersonalize, bad: str
) -> None:
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize))
    error = failure(resolver, query(FOR_YOU, user_id="u1", filter=bad))
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert (error.type, error.code) == ("Validation", "InvalidFilterParameter")
    assert fake_personalize.calls("GetRecommendations") == []


class CountingSts:
    """A minimal STS speaking the query protocol: GetCallerIdentity, counted."""

    ACCOUNT = "210987654321"

    def __init__(self) -> None:
        self.calls = 0
        answer = (
            '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<GetCallerIdentityResult><Account>{self.ACCOUNT}</Account>"
            f"<Arn>arn:aws:iam::{self.ACCOUNT}:user/tester</Arn><UserId>AIDTEST</UserId>"
            "</GetCallerIdentityResult><ResponseMetadata><RequestId>r1</RequestId>"
            "</ResponseMetadata></GetCallerIdentityResponse>"
        ).encode()
        sts = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                assert b"Action=GetCallerIdentity" in body
                sts.calls += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def counting_sts(aws_test_env: None) -> Iterator[CountingSts]:
    sts = CountingSts()
    try:
        yield sts
    finally:
        sts.close()


def test_filter_name_without_account_asks_sts_once(
    fake_personalize: FakePersonalize, counting_sts: CountingSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", counting_sts.endpoint)
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize, PLACEHOLDER))
    first = query(FOR_YOU, user_id="u1", filter="cheap")
    resolve(resolver, first, first, first)
    arns = [c.request["filterArn"] for c in fake_personalize.calls("GetRecommendations")]
    # the caller's account; the region is the client's (AWS_REGION in the test env)
    assert arns == ["arn:aws:personalize:us-east-1:210987654321:filter/cheap"] * 3
    assert counting_sts.calls == 1


def test_filter_name_with_sts_from_moto(
    fake_personalize: FakePersonalize, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server)
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize, PLACEHOLDER))
    resolve(resolver, query(FOR_YOU, user_id="u1", filter="cheap"))
    assert sent(fake_personalize)["filterArn"] == (
        "arn:aws:personalize:us-east-1:123456789012:filter/cheap"  # moto's account
    )


@pytest.mark.parametrize("name", ["../x", "a:b", "x/filter/y", "", "-lead"])
def test_a_filter_name_cannot_reshape_the_arn(fake_personalize: FakePersonalize, name: str) -> None:
    resolver = make_resolver(FOR_YOU, campaign(fake_personalize))
    error = failure(resolver, query(FOR_YOU, user_id="u1", filter=name))
    assert isinstance(error, InvalidRequest) and error.status == 400
    assert fake_personalize.call_count(None) == 0


def test_endpoint_from_the_standard_aws_settings(
    fake_personalize: FakePersonalize, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake_personalize.endpoint)
    variation = campaign(fake_personalize)
    del variation["endpointUrl"]
    [answer] = resolve(make_resolver(FOR_YOU, variation), query(FOR_YOU, user_id="u1"))
    assert len(answer.items) == 25 and fake_personalize.call_count("GetRecommendations") == 1


def failed(fake: FakePersonalize, one: Query | None = None, **extra: Any) -> Exception:
    resolver = make_resolver(FOR_YOU, campaign(fake, **extra))
    return failure(resolver, one or query(FOR_YOU, user_id="u1"))


def test_throttling_is_429_after_one_adaptive_retry(fake_personalize: FakePersonalize) -> None:
    fake_personalize.set_faults(throttle=1.0)
    error = failed(fake_personalize)
    assert isinstance(error, Throttled) and error.status == 429
    assert error.code == "ThrottlingException"
    assert fake_personalize.call_count("GetRecommendations") == 2


def test_server_error_is_502(fake_personalize: FakePersonalize) -> None:
    fake_personalize.set_faults(server_error=1.0)
    error = failed(fake_personalize)
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == "InternalFailure"


def test_backend_validation_error_is_502_with_its_code(fake_personalize: FakePersonalize) -> None:
    error = failed(fake_personalize, query(FOR_YOU, num_results=5))  # neither user nor item
    assert type(error) is UpstreamError and error.status == 502
    assert error.code == "InvalidInputException"


def test_unknown_campaign_is_502_with_its_code(fake_personalize: FakePersonalize) -> None:
    variation = campaign(fake_personalize) | {"arn": CAMPAIGN.replace("picks", "gone")}
    error = failure(make_resolver(FOR_YOU, variation), query(FOR_YOU, user_id="u1"))
    assert type(error) is UpstreamError and error.code == "ResourceNotFoundException"


def test_slow_backend_is_504(fake_personalize: FakePersonalize) -> None:
    fake_personalize.set_faults(latency=1.0)
    error = failed(fake_personalize, timeoutMs=100)
    assert isinstance(error, UpstreamTimeout) and error.status == 504


def test_unreachable_backend_is_502(fake_personalize: FakePersonalize) -> None:
    error = failed(fake_personalize, endpointUrl=f"http://127.0.0.1:{free_port()}")
    assert type(error) is UpstreamError and error.status == 502
