"""The OpenAPI spec (issue 4): valid for the default and a richer config, faithful to the config,
the same from ``p13n openapi`` as from ``GET /openapi.json``; the running service conforms to it
(schemathesis); ``/docs`` renders every operation in headless Chromium."""

from __future__ import annotations

import copy
import hashlib
import html
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from openapi_spec_validator import validate

from ingest.body import EventsBody
from schemas.config import default_document, load_config
from tests.fixtures.chromium import dump_dom
from tests.fixtures.service import Service, wait_until
from web.docs import ASSETS
from web.openapi import build_spec

API_KEY = "docs-test-key"
HEADERS = {"x-api-key": API_KEY}
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
RECOMMENDATION_PATHS = {
    "recommend-items": ["/recommend-items/{namespace}/{recommender}/{userId}"],
    "related-items": ["/related-items/{namespace}/{recommender}/{itemId}"],
    "rerank-items": [
        "/rerank-items/{namespace}/{recommender}/{userId}/{itemIds}",
        "/rerank-items/{namespace}/{recommender}/{userId}",
    ],
}


def local(algorithm: str) -> dict[str, Any]:
    return {"variations": {algorithm: {"type": "local", "algorithm": algorithm}}}


def rich_config() -> dict[str, Any]:
    """Two namespaces sharing no recommender, one without recommenders, API keys, a version."""
    interactions = [{"type": "interactions", "name": "interactions"}]
    return {
        "version": "rich-7",
        "auth": {
            "apiKeys": [{"id": "web", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]
        },
        "namespaces": {
            "shop": {
                "eventTargets": interactions,
                "recommenders": {
                    "recommend-items": {
                        "top-picks": local("popularity"),
                        "for-you": local("affinity"),
                    },
                    "related-items": {"similar": local("co-occurrence")},
                },
            },
            "news": {
                "eventTargets": interactions,
                "recommenders": {
                    "recommend-items": {"trending": local("popularity")},
                    "rerank-items": {"personal": local("affinity")},
                },
            },
            "archive-only": {"eventTargets": [{"type": "archive", "name": "archive"}]},
        },
    }


def param(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in operation["parameters"] if p.get("name") == name)


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


# -- the spec as a function of the config ------------------------------------------------------


def test_default_config_spec_validates() -> None:
    spec = build_spec(load_config(default_document()))
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    assert "securitySchemes" not in spec["components"]
    assert "security" not in spec


def test_rich_config_spec_validates_with_enums_from_the_config() -> None:
    spec = build_spec(load_config(rich_config()))
    validate(spec)

    events = spec["paths"]["/events/{namespace}"]["post"]
    assert param(events, "namespace")["schema"]["enum"] == ["archive-only", "news", "shop"]
    expected = {
        "recommend-items": (["news", "shop"], ["for-you", "top-picks", "trending"]),
        "related-items": (["shop"], ["similar"]),
        "rerank-items": (["news"], ["personal"]),
    }
    for action, (namespaces, recommenders) in expected.items():
        for path in RECOMMENDATION_PATHS[action]:
            for operation in spec["paths"][path].values():
                assert param(operation, "namespace")["schema"]["enum"] == namespaces, path
                assert param(operation, "recommender")["schema"]["enum"] == recommenders, path

    # Keys configured: every operation but the probes needs one, and documents 401/403.
    assert spec["security"] == [{"apiKey": []}]
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }
    for path, _, operation in operations(spec):
        if path in ("/healthz", "/readyz"):
            assert operation["security"] == []
        else:
            assert {"401", "403"} <= operation["responses"].keys(), path
    version = spec["components"]["headers"]["X-Personalization-Config-Version"]
    assert "rich-7" in version["description"]
    # No experiments anywhere: a conversion can never be valid.
    rules = events["requestBody"]["content"]["application/json"]["schema"]["allOf"]
    assert rules[-1]["properties"]["experimentConversions"]["maxItems"] == 0


def test_error_responses_share_the_error_schema() -> None:
    spec = build_spec(load_config(rich_config()))
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["type", "code", "message"]
    for name, response in spec["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
    assert "Retry-After" in spec["components"]["responses"]["ServiceUnavailable"]["headers"]


def test_an_action_nobody_configures_has_no_paths() -> None:
    document = copy.deepcopy(rich_config())
    del document["namespaces"]["news"]["recommenders"]["rerank-items"]
    spec = build_spec(load_config(document))
    validate(spec)
    assert not any(path.startswith("/rerank-items/") for path in spec["paths"])
    assert "/recommend-items/{namespace}/{recommender}/{userId}" in spec["paths"]


def test_events_body_is_described_by_the_structs_that_validate_it() -> None:
    spec = build_spec(load_config(default_document()))
    _, components = msgspec.json.schema_components(
        [EventsBody], ref_template="#/components/schemas/{name}"
    )
    for name, schema in components.items():
        assert spec["components"]["schemas"][name] == schema
    # The default config has one experiment with one metric: conversions name exactly its
    # recommender, and may leave out its feature and metric (as the sample allowed).
    body = spec["paths"]["/events/{namespace}"]["post"]["requestBody"]
    rules = body["content"]["application/json"]["schema"]["allOf"]
    [conversions] = [
        rule["properties"]["experimentConversions"]
        for rule in rules
        if "experimentConversions" in rule.get("properties", {})
    ]
    assert conversions["items"] == {
        "anyOf": [
            {
                "required": ["recommender"],
                "properties": {
                    "recommender": {"const": "for-you"},
                    "feature": {"const": "for-you-ranking"},
                    "metric": {"enum": ["recClicked"]},
                },
            }
        ]
    }


def test_the_same_config_gives_the_same_document() -> None:
    first = json.dumps(build_spec(load_config(rich_config())))
    again = json.dumps(build_spec(load_config(rich_config())))
    assert first == again


# -- the running service -----------------------------------------------------------------------


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(json.dumps(document))
    os.replace(scratch, path)


def test_cli_prints_what_the_service_serves_and_a_reload_changes_both(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory(rich_config())
    with service.client() as http:
        served = http.get("/openapi.json")
        assert served.status_code == 200
        assert served.headers["content-type"] == "application/json"
        assert served.headers["x-personalization-config-version"] == "rich-7"
        printed = service.cli("openapi")
        assert printed.returncode == 0, printed.stderr
        assert json.loads(printed.stdout) == served.json()

        assert service.config_path is not None
        document = rich_config()
        document["version"] = "rich-8"
        document["namespaces"]["more"] = {"eventTargets": [{"type": "archive", "name": "a"}]}
        write_atomically(service.config_path, document)

        def reloaded() -> dict[str, Any] | None:
            spec: dict[str, Any] = http.get("/openapi.json").json()
            return spec if spec["info"]["version"] == "rich-8" else None

        spec = wait_until(reloaded, timeout=10, what="the spec of the reloaded config")
        events = spec["paths"]["/events/{namespace}"]["post"]
        assert "more" in param(events, "namespace")["schema"]["enum"]
        printed = service.cli("openapi")
        assert json.loads(printed.stdout) == spec


def test_docs_and_spec_are_public_when_api_keys_are_set(
    service_factory: Callable[..., Service],
) -> None:
    service = service_factory(rich_config())
    with service.client() as http:
        page = http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "://" not in page.text  # nothing from another origin: no CDN
        for name, media_type in ASSETS.items():
            asset = http.get(f"/docs/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"] == media_type
            assert len(asset.content) > 500
        assert http.get("/openapi.json").status_code == 200
        # Everything else still needs the key, including files of the dist the page does not use.
        assert http.get("/docs/index.html").status_code == 401
        assert http.get("/metrics").status_code == 401
        missing = http.get("/docs/index.html", headers=HEADERS)
        assert missing.status_code == 404
        assert missing.json()["code"] == "NotFound"


def test_the_service_conforms_to_its_spec(
    service_factory: Callable[..., Service], tmp_path: Path
) -> None:
    service = service_factory(rich_config())
    # A request made invalid by making its values longer can pass the URL limit of the HTTP
    # parser: 414 URITooLong is a rejection too (schemathesis's default list lacks it).
    (tmp_path / "schemathesis.toml").write_text(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "414", "415",'
        ' "422", "428", "429", "5XX"]\n'
    )
    # Every check: server errors, responses and headers against the spec, valid requests
    # accepted (positive_data_acceptance), invalid ones rejected.
    done = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{service.url}/openapi.json",
            "--header",
            f"x-api-key: {API_KEY}",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--seed",
            os.environ.get("P13N_SCHEMATHESIS_SEED", "2"),
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,  # hypothesis keeps its example database in the working directory
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout
    # The figures (shown with -s): how many requests, in how long.
    print(*(line for line in done.stdout.splitlines() if "generated" in line or "issues" in line))


def test_docs_page_shows_every_operation(
    service_factory: Callable[..., Service], tmp_path: Path
) -> None:
    service = service_factory(rich_config())
    with service.client(headers=HEADERS) as http:
        spec = http.get("/openapi.json").json()
    dom = dump_dom(f"{service.url}/docs", tmp_path / "chromium-profile")
    assert 'id="swagger-ui"' in dom
    assert len(operations(spec)) == 8
    for path, method, operation in operations(spec):
        assert f'data-path="{path}"' in dom, f"{method.upper()} {path} not rendered"
        assert html.escape(operation["summary"], quote=False) in dom, operation["summary"]
