"""Experiment results: conversion rates per variation, with their uncertainty.

For every experiment of the config (and any the store counted that the config no longer has),
per metric and variation: exposures, conversions, rate = conversions / exposures, the 95%
Wilson score interval of the rate, lift = rate / control rate - 1, and the two-sided p-value of
a two-proportion z-test against the control (pooled standard error). The control is the first
variation in config order (the experiment's ``weights``, else its recommender's ``variations``).
Where a number cannot be computed — no exposures, a control rate of 0, more conversions than
exposures (a rate that is no proportion) — it is ``None``, never an error. The report is printed and drawn by ``p13n experiments report``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from consumers.experiment_store import Counters
from schemas.config import Config, Recommender

Z_95 = 1.959963984540054  # the standard normal quantile of 0.975


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion; None without trials or when not a proportion."""
    if trials <= 0 or not 0 <= successes <= trials:
        return None
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # rounding must not push a bound past the rate itself (0/n gives centre - half = +2e-19)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def two_proportion_z_test(
    control_successes: int, control_trials: int, successes: int, trials: int
) -> tuple[float, float] | None:
    """(z, two-sided p-value) of "the second proportion differs from the first", pooled SE."""
    if control_trials <= 0 or trials <= 0:
        return None
    if not (0 <= control_successes <= control_trials and 0 <= successes <= trials):
        return None
    pooled = (control_successes + successes) / (control_trials + trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / control_trials + 1 / trials))
    if se == 0:  # both rates 0, or both 1: no difference to find
        return 0.0, 1.0
    z = (successes / trials - control_successes / control_trials) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class VariationResult:
    variation: str
    exposures: int
    conversions: int
    value_sum: float
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    lift: float | None
    z: float | None
    p_value: float | None


@dataclass(frozen=True)
class MetricResult:
    metric: str
    variations: tuple[VariationResult, ...]


@dataclass(frozen=True)
class ExperimentResult:
    namespace: str
    recommender: str
    feature: str
    control: str | None
    configured: bool
    exposures: Mapping[str, int]
    metrics: tuple[MetricResult, ...]


def metric_results(
    metric: str,
    variations: Sequence[str],
    exposures: Mapping[str, int],
    conversions: Mapping[str, tuple[int, float]],
) -> MetricResult:
    """One metric's numbers; ``variations[0]`` is the control."""
    rows = []
    control = variations[0] if variations else None
    control_n = exposures.get(control, 0) if control else 0
    control_x = conversions.get(control, (0, 0.0))[0] if control else 0
    control_rate = control_x / control_n if control_n else None
    for variation in variations:
        n = exposures.get(variation, 0)
        x, total = conversions.get(variation, (0, 0.0))
        rate = x / n if n else None
        interval = wilson_interval(x, n)
        lift = rate / control_rate - 1 if rate is not None and control_rate else None
        test = two_proportion_z_test(control_x, control_n, x, n) if variation != control else None
        rows.append(
            VariationResult(
                variation=variation,
                exposures=n,
                conversions=x,
                value_sum=total,
                rate=rate,
                ci_low=interval[0] if interval else None,
                ci_high=interval[1] if interval else None,
                lift=lift if variation != control else None,
                z=test[0] if test else None,
                p_value=test[1] if test else None,
            )
        )
    return MetricResult(metric, tuple(rows))


def _config_order(recommender: Recommender | None, feature: str) -> list[str]:
    if recommender is None:
        return []
    experiment = recommender.experiments.get(feature)
    order = list(experiment.weights) if experiment else []
    return order + [v for v in recommender.variations if v not in order]


def build_report(
    config: Config, counters: Counters, namespace: str | None = None
) -> list[ExperimentResult]:
    """Every configured experiment (of ``namespace``, or all), then any others counted."""
    keys: dict[tuple[str, str, str], None] = {}
    namespaces = [config.namespace(namespace)] if namespace else config.namespaces.values()
    for ns in namespaces:
        for by_name in ns.recommenders.values():
            for rec in by_name.values():
                for feature in rec.experiments:
                    keys[(ns.key, rec.name, feature)] = None
    counted = {(k[0], k[1], k[2]) for k in [*counters.exposures, *counters.conversions]}
    for key in sorted(counted):
        if namespace is None or key[0] == namespace:
            keys.setdefault(key, None)
    return [_experiment(config, counters, *key) for key in keys]


def _experiment(
    config: Config, counters: Counters, namespace: str, recommender_name: str, feature: str
) -> ExperimentResult:
    ns = config.namespaces.get(namespace)
    recommender = ns.recommender_named(recommender_name) if ns else None
    experiment = recommender.experiments.get(feature) if recommender else None
    exposures = {
        k[3]: n
        for k, n in counters.exposures.items()
        if k[:3] == (namespace, recommender_name, feature)
    }
    by_metric: dict[str, dict[str, tuple[int, float]]] = {
        m: {} for m in (experiment.metrics if experiment else ())
    }
    for k, c in counters.conversions.items():
        if k[:3] == (namespace, recommender_name, feature):
            by_metric.setdefault(k[4], {})[k[3]] = (c.count, c.value_sum)
    variations = _config_order(recommender, feature)
    seen = set(exposures) | {v for per in by_metric.values() for v in per}
    variations += sorted(seen - set(variations))
    return ExperimentResult(
        namespace=namespace,
        recommender=recommender_name,
        feature=feature,
        control=variations[0] if variations else None,
        configured=experiment is not None,
        exposures={v: exposures.get(v, 0) for v in variations},
        metrics=tuple(
            metric_results(metric, variations, exposures, per) for metric, per in by_metric.items()
        ),
    )


def to_json(results: Iterable[ExperimentResult]) -> dict[str, Any]:
    return {"experiments": [asdict(r) for r in results]}
