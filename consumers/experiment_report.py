"""``p13n experiments report``: conversion rates per variation, with their uncertainty.

For every experiment of the config (and any the store counted that the config no longer has),
per metric and variation: exposures, conversions, rate = conversions / exposures, the 95%
Wilson score interval of the rate, lift = rate / control rate - 1, and the two-sided p-value of
a two-proportion z-test against the control (pooled standard error). The control is the first
variation in config order (the experiment's ``weights``, else its recommender's ``variations``).
Where a number cannot be computed — no exposures, a control rate of 0, more conversions than
exposures (a rate that is no proportion) — it is ``None`` (``-`` in the table), never an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from consumers.experiment_store import Counters, build_store
from schemas.config import Config, Recommender
from schemas.errors import InvalidRequest, PermanentError

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


# -- output ---------------------------------------------------------------------------------


def to_json(results: Iterable[ExperimentResult]) -> dict[str, Any]:
    return {"experiments": [asdict(r) for r in results]}


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.0001" if value < 0.0001 else f"{value:.4f}"


def write_table(results: Sequence[ExperimentResult], out: TextIO) -> None:
    if not results:
        out.write("no experiments configured or counted\n")
        return
    header = (
        "variation",
        "exposures",
        "conversions",
        "rate",
        "95% interval",
        "lift",
        "p-value",
        "value sum",
    )
    for result in results:
        title = f"{result.namespace} / {result.recommender} / {result.feature}"
        if not result.configured:
            title += "  (no longer in the config)"
        out.write(f"{title}\n")
        if not result.metrics:
            for variation, n in result.exposures.items():
                out.write(f"  {variation}: {n} exposure(s)\n")
            out.write("\n")
            continue
        for metric in result.metrics:
            rows = [header] + [
                (
                    v.variation + (" (control)" if v.variation == result.control else ""),
                    str(v.exposures),
                    str(v.conversions),
                    _pct(v.rate),
                    f"[{_pct(v.ci_low)}, {_pct(v.ci_high)}]" if v.ci_low is not None else "-",
                    _pct(v.lift, signed=True),
                    _p(v.p_value),
                    f"{v.value_sum:g}",
                )
                for v in metric.variations
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
            out.write(f"  metric {metric.metric}\n")
            for row in rows:
                cells = [row[0].ljust(widths[0])] + [
                    c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
                ]
                out.write("    " + "  ".join(cells) + "\n")
        out.write("\n")


def write_plot(results: Sequence[ExperimentResult], path: str) -> None:
    """One bar chart per metric: conversion rate per variation with its 95% interval, as PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import PercentFormatter
    except ImportError as exc:
        raise PermanentError(
            "--plot needs matplotlib, an optional extra: pip install 'p13n[plot]'",
            code="MissingDependency",
        ) from exc
    panels = [(r, m) for r in results for m in r.metrics]
    figure = Figure(figsize=(7, 3.2 * max(1, len(panels))), layout="constrained")
    FigureCanvasAgg(figure)
    if not panels:
        axes = figure.subplots()
        axes.axis("off")
        axes.text(0.5, 0.5, "no experiment metrics to plot", ha="center", va="center")
    for number, (result, metric) in enumerate(panels, start=1):
        axes = figure.add_subplot(len(panels), 1, number)
        names = [v.variation for v in metric.variations]
        rates = [v.rate or 0.0 for v in metric.variations]
        below = [
            (v.rate - v.ci_low) if v.rate is not None and v.ci_low is not None else 0.0
            for v in metric.variations
        ]
        above = [
            (v.ci_high - v.rate) if v.rate is not None and v.ci_high is not None else 0.0
            for v in metric.variations
        ]
        colours = ["#7f7f7f" if n == result.control else "#1f77b4" for n in names]
        labels = [f"{n}\n(control)" if n == result.control else n for n in names]
        axes.bar(labels, rates, yerr=[below, above], capsize=6, color=colours)
        for position, v in enumerate(metric.variations):
            label = f"{v.conversions}/{v.exposures}"
            if v.p_value is not None:
                label += f"\np={v.p_value:.3g}"
            axes.annotate(
                label,
                (position, 0),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        axes.set_ylabel("conversion rate (95% interval)")
        axes.set_title(
            f"{result.namespace} / {result.recommender} / {result.feature}: {metric.metric}",
            fontsize=10,
        )
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise PermanentError(f"--plot {path}: {exc.strerror or exc}", code="PlotFailed") from exc


# -- the command ----------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace, config: Config, out: TextIO = sys.stdout) -> int:
    plot = os.path.abspath(args.plot) if args.plot else None
    if plot is not None and not os.path.isdir(os.path.dirname(plot)):
        # Checked before any work, so a mistyped folder costs nothing and says so in one line.
        raise InvalidRequest(f"--plot {args.plot}: no folder {os.path.dirname(plot)}")
    counters = build_store(config).read(args.namespace)
    results = build_report(config, counters, args.namespace)
    if args.format == "json":
        out.write(json.dumps(to_json(results), indent=2) + "\n")
    else:
        write_table(results, out)
    if plot is not None:
        write_plot(results, plot)
        print(f"p13n: wrote the chart to {plot}", file=sys.stderr)
    return 0


def add_experiments_command(
    commands: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    config_of: Callable[[argparse.Namespace], Config],
) -> None:
    """Register ``p13n experiments report``; ``config_of(args)`` loads the config like the CLI."""
    experiments = commands.add_parser("experiments", help="experiment results")
    subcommands = experiments.add_subparsers(dest="experiments_command", required=True)
    report = with_config(
        subcommands.add_parser("report", help="conversion rates per variation, with significance")
    )
    report.add_argument("--namespace", help="only this namespace")
    report.add_argument(
        "--format", choices=("table", "json"), default="table", help="how to print the report"
    )
    report.add_argument("--plot", metavar="FILE.png", help="also draw the rates as a PNG chart")
    report.set_defaults(func=lambda args: cmd_report(args, config_of(args)))
