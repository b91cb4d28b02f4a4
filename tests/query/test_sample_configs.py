"""The sample project's configs load unchanged and serve, Evidently experiments included."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.fake_personalize import FakePersonalize
from tests.fixtures.service import Service

SAMPLES = Path(__file__).parents[3] / "shared" / "reference" / "sample-project"


def test_evidently_experiment_config_runs_on_local_assignment(
    service_factory: Callable[..., Service], fake_personalize: FakePersonalize
) -> None:
    config = json.loads((SAMPLES / "config_experiment.json").read_text())
    variations = config["namespaces"]["my-store"]["recommenders"]["related-items"]["similar"][
        "variations"
    ]
    for variation in variations.values():
        fake_personalize.add_campaign(
            variation["arn"], [f"{variation['arn'][-3:]}-{n}" for n in range(30)]
        )
    # The sample's namespace has no event targets: the service still serves its recommenders.
    service = service_factory(
        config,
        extra_args=("--no-consumers",),
        env={"AWS_ENDPOINT_URL_PERSONALIZE_RUNTIME": fake_personalize.endpoint},
    )
    chosen = set()
    with service.client() as client:
        for user in ("ann", "ben", "cat", "dan", "eve", "fay"):
            url = f"/related-items/my-store/similar/item-1?userId={user}&numResults=3"
            reply = client.get(url)
            assert reply.status_code == 200, reply.text
            matched = reply.json()["matchedExperiment"]
            assert matched["feature"] == "product-detail-view" and matched["method"] == "evidently"
            assert len(reply.json()["itemList"]) == 3
            again = client.get(url + "&decorateItems=1")
            assert again.json()["matchedExperiment"] == matched  # the same user, the same one
            chosen.add(matched["variation"])
    assert chosen == {"sims", "similar-items"}
    warnings = [line for line in service.logs() if "Evidently" in line.get("message", "")]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert "my-store/similar/product-detail-view" in warnings[0]["message"]
