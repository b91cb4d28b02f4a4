"""Which variation serves a request, and the experiment that chose it.

Rules (the sample project's, with local assignment): no experiments, no user, or a single
variation → the first variation, no experiment, and ``feature`` is ignored. Otherwise the
experiment named by ``feature`` (400 ``InvalidExperimentFeature`` if the recommender has no such
feature), or the first one, assigns the user through ``schemas.experiments.assign`` — the same
function experiment tracking uses for conversions.

``matchedExperiment`` carries the sample's keys — ``type`` (the method), ``feature`` and
``details`` (``{"experiment", "treatment"}``, the shape Evidently's details had) — and p13n's
own ``method`` and ``variation``, so dashboards written for either keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.config import Config, Experiment, Recommender, Variation
from schemas.errors import InvalidRequest, NotFound
from schemas.experiments import assign


@dataclass(frozen=True)
class Choice:
    variation: Variation
    experiment: Experiment | None = None

    def matched(self) -> dict[str, Any] | None:
        """The response's ``matchedExperiment``, when an experiment made the choice."""
        if self.experiment is None:
            return None
        return {
            "type": self.experiment.method,
            "feature": self.experiment.feature,
            "details": {"experiment": self.experiment.feature, "treatment": self.variation.name},
            "method": self.experiment.method,
            "variation": self.variation.name,
        }


def choose(recommender: Recommender, user_id: str | None, feature: str | None) -> Choice:
    variations = list(recommender.variations.values())
    if not variations:
        raise NotFound(
            f"Recommender '{recommender.name}' has no variations",
            code="NoVariationsConfigured",
        )
    if not recommender.experiments or user_id is None or len(variations) == 1:
        return Choice(variations[0])  # nothing to evaluate: the sample ignores ``feature`` too
    experiment: Experiment | None
    if feature is not None:
        experiment = recommender.experiments.get(feature)
        if experiment is None:
            raise InvalidRequest(
                f"feature '{feature}' is not an experiment of recommender '{recommender.name}'",
                code="InvalidExperimentFeature",
            )
    else:
        experiment = next(iter(recommender.experiments.values()))
    name = assign(experiment.feature, user_id, experiment.weights)
    return Choice(recommender.variations[name], experiment)


def evidently_features(config: Config) -> list[str]:
    """``namespace/recommender/feature`` of every experiment configured with ``method:
    evidently``: CloudWatch Evidently was discontinued in 2025, so these run on local assignment."""
    return [
        f"{ns.key}/{rec.name}/{experiment.feature}"
        for ns in config.namespaces.values()
        for by_name in ns.recommenders.values()
        for rec in by_name.values()
        for experiment in rec.experiments.values()
        if experiment.method == "evidently"
    ]
