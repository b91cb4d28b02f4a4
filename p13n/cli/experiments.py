"""``p13n experiments report``: the experiment report (``consumers.experiment_report``) as a
table or JSON, and optionally as a chart. A number that cannot be computed prints as ``-``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from consumers.experiment_report import ExperimentResult, build_report, to_json
from consumers.experiment_store import build_store
from p13n.cli.common import Commands, config_of, with_config
from schemas.config import Config
from schemas.errors import InvalidRequest, PermanentError


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


def add_command(commands: Commands) -> None:
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
