"""Assignment is deterministic and honours the weights."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas.experiments import assign, bucket


def test_the_same_user_always_gets_the_same_variation():
    weights = {"a": 1.0, "b": 1.0}
    assert {assign("f", "user-7", weights) for _ in range(5)} == {assign("f", "user-7", weights)}


def test_features_assign_independently():
    weights = {"a": 1.0, "b": 1.0}
    same = sum(
        assign("f1", f"u{i}", weights) == assign("f2", f"u{i}", weights) for i in range(4000)
    )
    assert 1800 < same < 2200  # about half agree: the two hashes are unrelated


@pytest.mark.parametrize(
    "weights", [{"a": 1, "b": 1}, {"a": 80, "b": 15, "c": 5}, {"x": 0.3, "y": 0.7}]
)
def test_ten_thousand_users_split_within_two_percent_of_the_weights(weights):
    counts = Counter(assign("feature", f"user-{i}", weights) for i in range(10_000))
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(counts[name] / 10_000 - weight / total) < 0.02, (name, counts)


def test_zero_weight_variations_get_nobody_and_all_zero_is_an_error():
    assert {assign("f", f"u{i}", {"off": 0, "on": 1}) for i in range(500)} == {"on"}
    with pytest.raises(ValueError):
        assign("f", "u", {"a": 0})


def test_bucket_is_in_the_unit_interval():
    assert all(0 <= bucket("f", f"u{i}") < 1 for i in range(1000))
