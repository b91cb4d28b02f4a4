"""``experiments``: counts exposures and conversions per experiment variation.

Not listed in ``eventTargets``: the supervisor runs it for every namespace whose recommenders
have experiments. Exposure records are counted for the variation they name (the one the query
path served). A conversion names a recommender, feature and metric but not a variation: it is
credited to ``schemas.experiments.assign(feature, userId, weights)``, the same deterministic
assignment the query path uses, with the weights of the current config. Conversions whose
recommender, feature or metric the config no longer has are skipped (logged once per name).
Counting is idempotent by event id (see ``consumers.experiment_store``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from consumers.base import Delivery, Failures
from consumers.experiment_store import Count, build_store
from consumers.targets import TargetContext
from schemas.codec import EXPOSURE, INTERACTION
from schemas.config import TargetConfig
from schemas.errors import RetryableError, Unavailable
from schemas.experiments import assign

log = logging.getLogger("p13n.consumers.experiments")


class ExperimentsTarget:
    kinds = frozenset({INTERACTION, EXPOSURE})

    def __init__(self, config: TargetConfig, context: TargetContext) -> None:
        self.name = config.name
        self._namespace = context.config.namespace(config.namespace)
        self._store = build_store(context.config)
        self._skipped: set[str] = set()

    def open(self) -> None:
        self._store.open()

    def deliver(self, batch: Sequence[Delivery]) -> Failures:
        counts: list[Count] = []
        for delivery in batch:
            if delivery.kind == EXPOSURE:
                counts.append(self._exposure(delivery.fields))
            else:
                counts.extend(self._conversions(delivery.fields))
        if not counts:
            return {}
        try:
            self._store.add(counts)
        except RetryableError:
            raise
        except Exception as exc:
            # A store that cannot count now (missing table, access) is no fault of the record.
            from aws.errors import translate

            error = translate(exc, "experiment store")
            raise Unavailable(error.message, code=error.code) from exc
        return {}

    def _exposure(self, record: Mapping[str, Any]) -> Count:
        return Count(
            event_id=record["recordId"].hex(),
            namespace=record["namespace"],
            recommender=record["recommender"],
            feature=record["feature"],
            variation=record["variation"],
        )

    def _conversions(self, record: Mapping[str, Any]) -> Iterator[Count]:
        user_id = record.get("userId")
        for index, conversion in enumerate(record.get("experimentConversions") or ()):
            name = f"{conversion['recommender']}/{conversion['feature']}/{conversion['metric']}"
            recommender = self._namespace.recommender_named(conversion["recommender"])
            experiment = recommender.experiments.get(conversion["feature"]) if recommender else None
            if experiment is None or conversion["metric"] not in experiment.metrics:
                self._skip(name, "not in the config")
                continue
            if not user_id:
                self._skip(name, "a conversion without userId")
                continue
            yield Count(
                event_id=f"{record['recordId'].hex()}:{index}",
                namespace=record["namespace"],
                recommender=conversion["recommender"],
                feature=conversion["feature"],
                variation=assign(experiment.feature, user_id, experiment.weights),
                metric=conversion["metric"],
                value=conversion.get("value"),
            )

    def _skip(self, name: str, why: str) -> None:
        if name not in self._skipped:
            self._skipped.add(name)
            log.warning(
                "experiments %s: skipping conversions for %s (%s)", self._namespace.key, name, why
            )

    def close(self) -> None:
        self._store.close()
