"""Experiment tracking: counts per variation through the running service, idempotent stores
(SQLite and DynamoDB on moto), the report's statistics, and its chart."""

from __future__ import annotations

import json
import math
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from aws.clients import client
from consumers.base import Delivery
from consumers.experiment_report import (
    build_report,
    metric_results,
    two_proportion_z_test,
    wilson_interval,
)
from consumers.experiment_store import (
    Conversions,
    Count,
    Counters,
    DynamoExperimentStore,
    SqliteExperimentStore,
    table_spec,
)
from consumers.supervisor import select_targets
from consumers.targets import TargetContext, build_target
from consumers.targets.experiments import ExperimentsTarget
from p13n.cli.experiments import write_plot
from schemas.codec import EXPOSURE, INTERACTION, Codec
from schemas.config import Config, load_config
from schemas.errors import ConfigError, PermanentError, Unavailable
from schemas.experiments import assign
from schemas.records import new_record_id
from streams.base import Entry, UserRecord
from streams.embedded import EmbeddedWriter
from tests.fixtures.service import Service, wait_until

CODEC = Codec.packaged()
FEATURE = "ranking"
WEIGHTS = {"popular": 1.0, "affinity": 3.0}  # control: popular, first in config order
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def document(**root: Any) -> dict[str, Any]:
    return {
        "version": "experiments-1",
        "namespaces": {
            "shop": {
                "recommenders": {
                    "recommend-items": {
                        "for-you": {
                            "experiments": {
                                FEATURE: {
                                    "method": "evidently",
                                    "project": "shop",
                                    "weights": WEIGHTS,
                                    "metrics": {
                                        "clicked": {
                                            "trackExposures": True,
                                            "entityIdKey": "userId",
                                            "valueKey": "clicked",
                                        },
                                        "bought": {"entityIdKey": "userId", "valueKey": "revenue"},
                                    },
                                }
                            },
                            # listed in another order than the weights: the weights decide
                            "variations": {
                                "affinity": {"type": "local", "algorithm": "affinity"},
                                "popular": {"type": "local", "algorithm": "popularity"},
                            },
                        }
                    },
                    "related-items": {
                        "similar": {
                            "variations": {
                                "co-occurrence": {"type": "local", "algorithm": "co-occurrence"}
                            }
                        }
                    },
                },
                "eventTargets": [{"type": "interactions", "name": "interactions"}],
            },
            "plain": {"eventTargets": [{"type": "interactions", "name": "interactions"}]},
        },
        **root,
    }


def config_in(tmp_path: Any, **root: Any) -> Config:
    return load_config(document(**root)).with_data_dir(str(tmp_path))


def variation_of(user: str) -> str:
    return assign(FEATURE, user, WEIGHTS)


def interaction_fields(user: str, *conversions: tuple[str, float | None]) -> dict[str, Any]:
    return {
        "recordId": new_record_id(),
        "namespace": "shop",
        "receivedAt": 1_700_000_000_000,
        "partitionKeyField": "sessionId",
        "sessionId": f"s-{user}",
        "userId": user,
        "eventList": [],
        "experimentConversions": [
            {"recommender": "for-you", "feature": FEATURE, "metric": metric, "value": value}
            for metric, value in conversions
        ],
        "context": {},
    }


def exposure_fields(user: str, variation: str | None = None) -> dict[str, Any]:
    return {
        "recordId": new_record_id(),
        "namespace": "shop",
        "receivedAt": 1_700_000_000_000,
        "partitionKeyField": "userId",
        "userId": user,
        "sessionId": None,
        "action": "recommend-items",
        "recommender": "for-you",
        "feature": FEATURE,
        "variation": variation or variation_of(user),
        "recommendationId": None,
    }


def delivery(fields: dict[str, Any]) -> Delivery:
    kind = EXPOSURE if "variation" in fields else INTERACTION
    record = UserRecord("shard-0", "1", 0, fields["userId"], CODEC.encode(kind, fields), 0)
    return Delivery(record, kind, fields)


def tracking_target(config: Config) -> ExperimentsTarget:
    (target_config,) = [t for t in select_targets(config) if t.type == "experiments"]
    built = build_target(target_config, TargetContext(config, CODEC))
    assert isinstance(built, ExperimentsTarget)
    return built


# -- through the service ------------------------------------------------------------------


def clicks_of(user_number: int) -> bool:
    return user_number % 2 == 0


def purchase_of(user_number: int) -> float | None:
    return 1.0 + (user_number % 4) * 0.5 if user_number % 5 == 0 else None


def exposures_of(user_number: int) -> int:
    return 1 + user_number % 3


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The counts of the report's shop/for-you/ranking experiment, per variation."""
    (experiment,) = [e for e in report["experiments"] if e["feature"] == FEATURE]
    return {
        "exposures": experiment["exposures"],
        "metrics": {
            m["metric"]: {
                v["variation"]: (v["conversions"], v["value_sum"]) for v in m["variations"]
            }
            for m in experiment["metrics"]
        },
    }


def test_the_service_counts_exposures_and_conversions_per_assigned_variation(
    service_factory, tmp_path
):
    service: Service = service_factory(document())
    users = [f"user-{n}" for n in range(240)]
    expected_exposures: Counter[str] = Counter()
    clicked: Counter[str] = Counter()
    bought: dict[str, list[float]] = {"popular": [], "affinity": []}

    with service.client() as http:
        for n, user in enumerate(users):
            conversions = []
            if clicks_of(n):
                conversions.append(
                    {"recommender": "for-you", "feature": FEATURE, "metric": "clicked"}
                )
                clicked[variation_of(user)] += 1
            value = purchase_of(n)
            if value is not None:
                conversions.append(
                    {
                        "recommender": "for-you",
                        "feature": FEATURE,
                        "metric": "bought",
                        "value": value,
                    }
                )
                bought[variation_of(user)].append(value)
            if conversions:
                answer = http.post(
                    "/events/shop",
                    json={
                        "sessionId": f"s-{n}",
                        "userId": user,
                        "experimentConversions": conversions,
                    },
                )
                assert answer.status_code in (200, 202), answer.text
    # The query path will write exposures; until then they go into the stream directly.
    writer = EmbeddedWriter(str(service.data_dir / "stream.db"), shards=4)
    try:
        entries = []
        for n, user in enumerate(users):
            for _ in range(exposures_of(n)):
                entries.append(Entry(user, CODEC.encode(EXPOSURE, exposure_fields(user))))
                expected_exposures[variation_of(user)] += 1
        writer.put_batch(entries)
    finally:
        writer.close()

    expected = {
        "exposures": {
            "popular": expected_exposures["popular"],
            "affinity": expected_exposures["affinity"],
        },
        "metrics": {
            "clicked": {v: (clicked[v], 0.0) for v in ("popular", "affinity")},
            "bought": {v: (len(bought[v]), sum(bought[v])) for v in ("popular", "affinity")},
        },
    }
    # Both variations really got users (weights 1:3), so the test means something.
    assert min(expected_exposures.values()) > 30
    observed: dict[str, Any] = {}

    def counted() -> bool:
        done = service.cli("experiments", "report", "--format", "json")
        assert done.returncode == 0, done.stderr
        observed.update(summary(json.loads(done.stdout)))
        return observed == expected

    try:
        wait_until(counted, timeout=60, interval=0.3)
    except AssertionError:
        assert observed == expected  # shows the difference
        raise

    started = [r["message"] for r in service.logs() if "consumers started" in r.get("message", "")]
    assert any("shop/experiments" in m and "plain/experiments" not in m for m in started), started

    done = service.cli("experiments", "report", "--format", "json", "--namespace", "shop")
    report = json.loads(done.stdout)
    (experiment,) = report["experiments"]
    assert experiment["control"] == "popular"
    clicks = {v["variation"]: v for v in experiment["metrics"][0]["variations"]}
    popular, affinity = clicks["popular"], clicks["affinity"]
    assert popular["rate"] == pytest.approx(clicked["popular"] / expected_exposures["popular"])
    assert popular["lift"] is None and popular["p_value"] is None
    assert affinity["lift"] == pytest.approx(affinity["rate"] / popular["rate"] - 1)
    z, p = two_proportion_z_test(
        clicked["popular"],
        expected_exposures["popular"],
        clicked["affinity"],
        expected_exposures["affinity"],
    )
    assert (affinity["z"], affinity["p_value"]) == pytest.approx((z, p))

    table = service.cli("experiments", "report")
    assert table.returncode == 0, table.stderr
    assert "shop / for-you / ranking" in table.stdout
    assert "popular (control)" in table.stdout
    assert "metric clicked" in table.stdout and "metric bought" in table.stdout

    chart = tmp_path / "rates.png"
    plotted = service.cli("experiments", "report", "--plot", str(chart))
    assert plotted.returncode == 0, plotted.stderr
    data = chart.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # two panels of bars, whiskers and labels, not an empty image


def test_an_unknown_namespace_is_an_error_of_the_report_command(service_factory):
    service: Service = service_factory(document())

    done = service.cli("experiments", "report", "--namespace", "nope")

    assert done.returncode == 1
    assert "nope" in done.stderr


# -- the target and its store -------------------------------------------------------------


def test_redelivery_counts_nothing_twice(tmp_path):
    config = config_in(tmp_path)
    target = tracking_target(config)
    users = [f"u{n}" for n in range(40)]
    batch = [delivery(exposure_fields(u)) for u in users] + [
        delivery(interaction_fields(u, ("clicked", None), ("bought", 2.5))) for u in users[::2]
    ]
    target.open()
    try:
        assert target.deliver(batch) == {}
        first = SqliteExperimentStore(str(tmp_path / "experiments.db")).read()
        assert target.deliver(batch) == {}  # redelivered after a crash, or replayed
        assert target.deliver(batch[::-1] + batch[:5]) == {}  # reordered, duplicated in a batch
    finally:
        target.close()
    second = SqliteExperimentStore(str(tmp_path / "experiments.db")).read()

    assert second == first
    per_variation = Counter(variation_of(u) for u in users)
    assert dict(first.exposures) == {
        ("shop", "for-you", FEATURE, v): n for v, n in per_variation.items()
    }
    converted = Counter(variation_of(u) for u in users[::2])
    assert dict(first.conversions) == {
        **{
            ("shop", "for-you", FEATURE, v, "clicked"): Conversions(n, 0.0)
            for v, n in converted.items()
        },
        **{
            ("shop", "for-you", FEATURE, v, "bought"): Conversions(n, 2.5 * n)
            for v, n in converted.items()
        },
    }


def test_exposures_count_for_the_variation_they_record(tmp_path):
    config = config_in(tmp_path)
    target = tracking_target(config)
    target.open()
    try:
        # what was served is what counts, even when today's assignment would differ
        target.deliver([delivery(exposure_fields(f"u{n}", "affinity")) for n in range(5)])
    finally:
        target.close()

    counters = SqliteExperimentStore(str(tmp_path / "experiments.db")).read("shop")
    assert dict(counters.exposures) == {("shop", "for-you", FEATURE, "affinity"): 5}


def test_conversions_no_longer_in_the_config_are_skipped_and_logged_once(tmp_path, caplog):
    config = config_in(tmp_path)
    target = tracking_target(config)
    stale = [
        ("gone-recommender", FEATURE, "clicked"),
        ("for-you", "gone-feature", "clicked"),
        ("for-you", FEATURE, "gone-metric"),
    ]

    def record(recommender: str, feature: str, metric: str) -> Delivery:
        fields = interaction_fields("u1")
        fields["experimentConversions"] = [
            {"recommender": recommender, "feature": feature, "metric": metric, "value": None},
            {"recommender": "for-you", "feature": FEATURE, "metric": "clicked", "value": None},
        ]
        return delivery(fields)

    target.open()
    try:
        with caplog.at_level("WARNING", logger="p13n.consumers.experiments"):
            for _ in range(3):
                assert target.deliver([record(*names) for names in stale]) == {}
    finally:
        target.close()

    counters = SqliteExperimentStore(str(tmp_path / "experiments.db")).read()
    assert dict(counters.conversions) == {
        ("shop", "for-you", FEATURE, variation_of("u1"), "clicked"): Conversions(9, 0.0)
    }
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3
    for names in stale:
        assert sum("/".join(names) in w for w in warnings) == 1


def test_a_store_that_cannot_write_makes_the_batch_retryable(tmp_path):
    config = config_in(tmp_path)
    target = tracking_target(config)
    target.open()
    target.close()  # the store is closed: writing fails

    with pytest.raises(Unavailable):
        target.deliver([delivery(exposure_fields("u1"))])


def test_reading_a_store_that_was_never_written_creates_nothing(tmp_path):
    store = SqliteExperimentStore(str(tmp_path / "nothing-here" / "experiments.db"))

    assert store.read() == Counters()
    assert not (tmp_path / "nothing-here").exists()


# -- which consumers run ------------------------------------------------------------------


def test_tracking_runs_for_namespaces_with_experiments_without_being_listed(tmp_path):
    config = config_in(tmp_path)

    groups = [t.group for t in select_targets(config)]
    assert groups == ["shop/interactions", "shop/experiments", "plain/interactions"]
    assert [t.group for t in select_targets(config, ["experiments"])] == ["shop/experiments"]
    assert [t.group for t in select_targets(config, ["shop/experiments"])] == ["shop/experiments"]
    with pytest.raises(ConfigError):
        select_targets(config, ["plain/experiments"])


def test_the_tracking_name_is_reserved(tmp_path):
    doc = document()
    doc["namespaces"]["shop"]["eventTargets"].append(
        {"type": "interactions", "name": "experiments"}
    )
    config = load_config(doc).with_data_dir(str(tmp_path))

    with pytest.raises(ConfigError, match="reserved"):
        select_targets(config)


# -- statistics ---------------------------------------------------------------------------


def test_two_proportion_z_test_matches_a_hand_computed_example():
    # control 200/1000 = 20%, treatment 250/1000 = 25%; pooled p = 450/2000 = 0.225
    # SE = sqrt(0.225 * 0.775 * (1/1000 + 1/1000)) = 0.0186748; z = 0.05 / SE = 2.67740
    # two-sided p = 2 * (1 - Phi(2.67740)) = 0.0074196
    z, p = two_proportion_z_test(200, 1000, 250, 1000)  # type: ignore[misc]

    assert z == pytest.approx(2.67740, abs=1e-5)
    assert p == pytest.approx(0.0074196, abs=1e-6)
    # symmetric, and no difference means z 0, p 1
    assert two_proportion_z_test(250, 1000, 200, 1000) == pytest.approx((-z, p))
    assert two_proportion_z_test(30, 100, 60, 200) == pytest.approx((0.0, 1.0))


def test_wilson_interval_matches_hand_computed_values():
    # 200/1000: centre (0.2 + 1.96^2/2000) / (1 + 1.96^2/1000) = 0.201146, half-width 0.024771
    assert wilson_interval(200, 1000) == pytest.approx((0.176377, 0.225919), abs=1e-6)
    # 0/10: [0, z^2 / (n + z^2)] = [0, 3.8415 / 13.8415]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)


def test_zero_exposures_and_degenerate_counts_give_none_not_errors():
    assert wilson_interval(0, 0) is None
    assert wilson_interval(5, 3) is None  # more conversions than exposures: not a proportion
    assert two_proportion_z_test(0, 0, 5, 10) is None
    assert two_proportion_z_test(5, 10, 0, 0) is None
    assert two_proportion_z_test(0, 10, 0, 10) == (0.0, 1.0)  # SE 0: both rates 0

    result = metric_results(
        "clicked",
        ["control", "b", "c"],
        exposures={"control": 0, "b": 10, "c": 4},
        conversions={"b": (3, 3.0), "c": (6, 6.0)},
    )
    control, b, c = result.variations
    assert control.rate is None and control.ci_low is None and control.lift is None
    assert b.rate == 0.3 and b.lift is None and b.p_value is None  # nothing to compare with
    assert c.rate == 1.5 and c.ci_low is None and c.p_value is None


def test_lift_is_relative_to_the_first_variation_in_config_order(tmp_path):
    config = config_in(tmp_path)
    key = ("shop", "for-you", FEATURE)
    counters = Counters(
        exposures={(*key, "affinity"): 1000, (*key, "popular"): 1000},
        conversions={
            (*key, "affinity", "clicked"): Conversions(250, 0.0),
            (*key, "popular", "clicked"): Conversions(200, 0.0),
        },
    )

    (experiment,) = build_report(config, counters)

    assert experiment.control == "popular"
    assert [m.metric for m in experiment.metrics] == ["clicked", "bought"]
    popular, affinity = experiment.metrics[0].variations
    assert (popular.variation, affinity.variation) == ("popular", "affinity")
    assert affinity.lift == pytest.approx(0.25)
    assert affinity.p_value == pytest.approx(0.0074196, abs=1e-6)
    bought = experiment.metrics[1].variations
    assert [(v.conversions, v.rate) for v in bought] == [(0, 0.0), (0, 0.0)]


def test_a_report_without_any_counts_is_all_zeros(tmp_path):
    config = config_in(tmp_path)

    (experiment,) = build_report(config, Counters())

    assert experiment.exposures == {"popular": 0, "affinity": 0}
    for metric in experiment.metrics:
        assert all(v.rate is None and v.p_value is None for v in metric.variations)
    plot = tmp_path / "empty.png"
    write_plot([experiment], str(plot))
    assert plot.read_bytes().startswith(PNG_MAGIC)


def test_plotting_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail

    with pytest.raises(PermanentError, match=r"pip install 'p13n\[plot\]'"):
        write_plot([], str(tmp_path / "x.png"))


# -- DynamoDB -----------------------------------------------------------------------------


@pytest.fixture
def dynamo_table(moto_server: str) -> Iterator[str]:
    dynamodb = client("dynamodb", endpoint_url=moto_server)
    name = f"experiments-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(**table_spec(name))
    yield name
    dynamodb.delete_table(TableName=name)


def test_dynamodb_store_counts_each_event_once(moto_server, dynamo_table):
    store = DynamoExperimentStore(dynamo_table, endpoint_url=moto_server)
    store.open()
    exposures = [Count(f"x{n}", "shop", "for-you", FEATURE, "ab"[n % 2]) for n in range(80)]
    conversions = [
        Count(f"c{n}:0", "shop", "for-you", FEATURE, "ab"[n % 2], "bought", 0.25 * n)
        for n in range(10)
    ]

    assert store.add(exposures[:30] + conversions) == 40
    # the second delivery overlaps the first: only the 50 new exposures count
    assert store.add(exposures + conversions) == 50
    assert store.add(exposures + conversions) == 0
    # ADD accumulates across calls
    assert store.add([Count("late", "shop", "for-you", FEATURE, "a")]) == 1
    store.add([Count("other-ns", "plain", "r", "f", "v")])

    counters = store.read("shop")
    assert dict(counters.exposures) == {
        ("shop", "for-you", FEATURE, "a"): 41,
        ("shop", "for-you", FEATURE, "b"): 40,
    }
    assert dict(counters.conversions) == {
        ("shop", "for-you", FEATURE, "a", "bought"): Conversions(5, 0.25 * (0 + 2 + 4 + 6 + 8)),
        ("shop", "for-you", FEATURE, "b", "bought"): Conversions(5, 0.25 * (1 + 3 + 5 + 7 + 9)),
    }
    everything = store.read()
    assert everything.exposures[("plain", "r", "f", "v")] == 1
    assert len(everything.exposures) == 3


def test_the_target_on_dynamodb_counts_a_redelivered_batch_once(
    moto_server, dynamo_table, tmp_path
):
    config = config_in(
        tmp_path,
        experimentStore={"type": "dynamodb", "tableName": dynamo_table, "endpointUrl": moto_server},
    )
    target = tracking_target(config)
    users = [f"u{n}" for n in range(30)]
    batch = [delivery(exposure_fields(u)) for u in users] + [
        delivery(interaction_fields(u, ("clicked", None))) for u in users
    ]
    target.open()
    try:
        assert target.deliver(batch) == {}
        assert target.deliver(batch) == {}
    finally:
        target.close()

    counters = DynamoExperimentStore(dynamo_table, endpoint_url=moto_server).read("shop")
    per_variation = Counter(variation_of(u) for u in users)
    assert dict(counters.exposures) == {
        ("shop", "for-you", FEATURE, v): n for v, n in per_variation.items()
    }
    assert {k[3]: c.count for k, c in counters.conversions.items()} == dict(per_variation)
    assert not (tmp_path / "experiments.db").exists()


def test_a_missing_table_is_retryable(moto_server, tmp_path):
    config = config_in(
        tmp_path,
        experimentStore={
            "type": "dynamodb",
            "tableName": "no-such-table",
            "endpointUrl": moto_server,
        },
    )
    target = tracking_target(config)
    target.open()
    try:
        with pytest.raises(Unavailable, match="ResourceNotFound"):
            target.deliver([delivery(exposure_fields("u1"))])
    finally:
        target.close()


def test_report_statistics_are_finite_numbers_in_json(tmp_path):
    """JSON has no NaN or infinity: every number is finite or null."""
    from consumers.experiment_report import to_json

    config = config_in(tmp_path)
    key = ("shop", "for-you", FEATURE)
    counters = Counters(
        exposures={(*key, "popular"): 0, (*key, "affinity"): 3},
        conversions={(*key, "affinity", "clicked"): Conversions(3, 0.0)},
    )

    text = json.dumps(to_json(build_report(config, counters)), allow_nan=False)

    def numbers(value: Any) -> Iterator[float]:
        if isinstance(value, dict):
            for v in value.values():
                yield from numbers(v)
        elif isinstance(value, list):
            for v in value:
                yield from numbers(v)
        elif isinstance(value, float):
            yield value

    assert all(math.isfinite(n) for n in numbers(json.loads(text)))
