"""Variation choice: deterministic assignment by the shared function, split by the weights."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from query.variations import choose
from schemas.config import Recommender, load_config
from schemas.errors import InvalidRequest
from schemas.experiments import assign


def recommender(experiments: dict[str, Any], variations: int = 3) -> Recommender:
    document = {
        "namespaces": {
            "ns": {
                "recommenders": {
                    "recommend-items": {
                        "rec": {
                            "experiments": experiments,
                            "variations": {f"v{i}": {"type": "local"} for i in range(variations)},
                        }
                    }
                }
            }
        }
    }
    return load_config(document).namespaces["ns"].recommenders["recommend-items"]["rec"]


METRIC = {"clicked": {"entityIdKey": "userId", "valueKey": "clicked"}}


def test_no_experiment_or_no_user_or_one_variation_serves_the_first() -> None:
    assert choose(recommender({}), "u1", None).variation.name == "v0"
    with_experiment = recommender({"f": {"method": "local", "metrics": METRIC}})
    choice = choose(with_experiment, None, None)
    assert choice.variation.name == "v0" and choice.matched() is None
    single = recommender({"f": {"method": "local", "metrics": METRIC}}, variations=1)
    assert choose(single, "u1", None).experiment is None


def test_same_user_same_variation_and_the_shared_function_decides() -> None:
    rec = recommender({"f": {"method": "evidently", "project": "p", "metrics": METRIC}})
    for user in ("a", "b", "c", "d"):
        first = choose(rec, user, None)
        assert choose(rec, user, "f") == first
        assert first.variation.name == assign("f", user, {"v0": 1, "v1": 1, "v2": 1})
        assert first.matched() == {
            # the sample project's keys
            "type": "evidently",
            "feature": "f",
            "details": {"experiment": "f", "treatment": first.variation.name},
            # p13n's
            "method": "evidently",
            "variation": first.variation.name,
        }


def test_ten_thousand_users_split_within_two_percent_of_the_weights() -> None:
    weights = {"v0": 0.5, "v1": 0.3, "v2": 0.2}
    rec = recommender({"f": {"method": "local", "metrics": METRIC, "weights": weights}})
    counts = Counter(choose(rec, f"user-{n}", None).variation.name for n in range(10_000))
    for name, weight in weights.items():
        assert abs(counts[name] / 10_000 - weight) <= 0.02, counts


def test_feature_picks_the_experiment_and_an_unknown_one_is_a_400() -> None:
    rec = recommender(
        {
            "first": {"method": "local", "metrics": METRIC, "weights": {"v0": 1}},
            "second": {"method": "local", "metrics": METRIC, "weights": {"v2": 1}},
        }
    )
    assert choose(rec, "u1", None).variation.name == "v0"
    assert choose(rec, "u1", "second").variation.name == "v2"
    with pytest.raises(InvalidRequest, match="nope"):
        choose(rec, "u1", "nope")
    with pytest.raises(InvalidRequest) as caught:
        choose(rec, "u1", "nope")
    assert caught.value.code == "InvalidExperimentFeature"  # the sample project's code


def test_feature_is_ignored_where_nothing_is_evaluated() -> None:
    """As in the sample: no experiments, no user, or one variation, and ``feature`` is never
    looked at (any value is fine, the first variation answers)."""
    with_experiment = recommender({"f": {"method": "local", "metrics": METRIC}})
    single = recommender({"f": {"method": "local", "metrics": METRIC}}, variations=1)
    for rec, user in ((recommender({}), "u1"), (with_experiment, None), (single, "u1")):
        choice = choose(rec, user, "no-such-feature")
        assert (choice.variation.name, choice.experiment) == ("v0", None)
