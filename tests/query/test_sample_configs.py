"""Configs written the sample project's way load unchanged and serve, Evidently included."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.fixtures.fake_personalize import FakePersonalize
from tests.fixtures.service import Service

# Shaped like the sample project's experiment config: an Evidently experiment with its project
# and dotted metric keys, two campaign variations with placeholder ARNs, no event targets.
SAMPLE_STYLE = {
    "version": "2",
    "namespaces": {
        "my-store": {
            "inferenceItemMetadata": {"type": "localdb", "syncInterval": 300},
            "recommenders": {
                "related-items": {
                    "similar": {
                        "experiments": {
                            "product-detail-view": {
                                "method": "evidently",
                                "project": "my-store",
                                "metrics": {
                                    "productDetailRecClicked": {
                                        "trackExposures": True,
                                        "entityIdKey": "userDetails.userId",
                                        "valueKey": "details.productClicked",
                                    }
                                },
                            }
                        },
                        "variations": {
                            "sims": {
                                "type": "personalize-campaign",
                                "arn": "arn:aws:personalize:[REGION]:[ACCOUNT]:campaign/[SIMS]",
                            },
                            "similar-items": {
                                "type": "personalize-campaign",
                                "arn": "arn:aws:personalize:[REGION]:[ACCOUNT]:campaign/[SIMILAR]",
                            },
                        },
                    }
                }
            },
        }
    },
}


def test_evidently_experiment_config_runs_on_local_assignment(
    service_factory: Callable[..., Service], fake_personalize: FakePersonalize
) -> None:
    config = json.loads(json.dumps(SAMPLE_STYLE))
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
