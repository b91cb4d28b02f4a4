"""``p13n config push`` against a server speaking AppConfig's REST-JSON API.

moto has no environments, deployment strategies, deployments or ListApplications (checked:
``moto.appconfig.responses.AppConfigResponse``), so the whole control plane is our fake
(``tests/fixtures/fake_appconfig.py``); boto3 serialises real requests to it. The resources
are created through boto3 too, as an operator would have them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aws.clients import client
from p13n.cli import main
from tests.fixtures.fake_appconfig import FakeAppConfig

VALID = {
    "version": "pushed-1",
    "namespaces": {"shop": {"eventTargets": [{"type": "interactions"}]}},
}


@dataclass
class Setup:
    fake: FakeAppConfig
    application_id: str
    environment_id: str
    profile_id: str


@pytest.fixture
def appconfig(aws_test_env: None) -> Iterator[Setup]:
    """The fake, with application ``p13n``, environment ``prod`` and profile ``main``."""
    fake = FakeAppConfig()
    try:
        boto = client("appconfig", endpoint_url=fake.url)
        application = boto.create_application(Name="p13n")["Id"]
        environment = boto.create_environment(ApplicationId=application, Name="prod")["Id"]
        profile = boto.create_configuration_profile(
            ApplicationId=application, Name="main", LocationUri="hosted"
        )["Id"]
        boto.create_application(Name="other")
        yield Setup(fake, application, environment, profile)
    finally:
        fake.close()


def push(setup: Setup, path: Path, *extra: str, target: str = "p13n/prod/main") -> int:
    arguments = ["config", "push", "--appconfig", target, str(path)]
    return main([*arguments, "--endpoint-url", setup.fake.url, *extra])


def write(tmp_path: Path, document: Any, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def test_a_valid_file_becomes_a_hosted_version_and_a_deployment(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)

    code = push(appconfig, path, "--description", "first push")

    assert code == 0
    (version,) = appconfig.fake.versions(appconfig.application_id, appconfig.profile_id)
    assert version.content == path.read_bytes()  # byte for byte, as written
    assert version.content_type == "application/json"
    assert version.description == "first push"
    (deployment,) = appconfig.fake.deployments(appconfig.application_id, appconfig.environment_id)
    assert deployment.body["ConfigurationVersion"] == "1"
    assert deployment.body["ConfigurationProfileId"] == appconfig.profile_id
    assert deployment.body["DeploymentStrategyId"] == "AppConfig.AllAtOnce"
    out = capsys.readouterr().out
    assert "hosted configuration version 1, deployment 1" in out
    assert "version pushed-1" in out


def test_ids_are_accepted_as_well_as_names_and_a_strategy_by_name(
    appconfig: Setup, tmp_path: Path
) -> None:
    boto = client("appconfig", endpoint_url=appconfig.fake.url)
    strategy = boto.create_deployment_strategy(
        Name="slow", DeploymentDurationInMinutes=10, GrowthFactor=20.0, ReplicateTo="NONE"
    )["Id"]
    target = f"{appconfig.application_id}/{appconfig.environment_id}/main"

    assert push(appconfig, write(tmp_path, VALID), "--strategy", "slow", target=target) == 0

    (deployment,) = appconfig.fake.deployments(appconfig.application_id, appconfig.environment_id)
    assert deployment.body["DeploymentStrategyId"] == strategy


def test_an_invalid_file_exits_2_with_its_errors_and_creates_nothing(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = list(appconfig.fake.requests)
    invalid = {"namespaces": {"shop": {"eventTargets": [{"type": "no-such-target"}]}}}

    code = push(appconfig, write(tmp_path, invalid))

    assert code == 2
    assert "eventTargets" in capsys.readouterr().err
    assert appconfig.fake.requests == before  # not even a lookup


def test_a_file_that_is_not_json_exits_2(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"namespaces": ')
    before = list(appconfig.fake.requests)

    assert push(appconfig, path) == 2
    assert "not JSON" in capsys.readouterr().err
    assert appconfig.fake.requests == before


def test_an_unknown_application_is_a_clear_error(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = appconfig.fake.writes

    code = push(appconfig, write(tmp_path, VALID), target="nope/prod/main")

    assert code == 1
    err = capsys.readouterr().err
    assert "no AppConfig application 'nope'" in err
    assert "p13n (" in err and "other (" in err  # what exists, to pick from
    assert appconfig.fake.writes == before  # no version, no deployment


def test_an_unknown_environment_or_strategy_creates_nothing(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID)
    before = appconfig.fake.writes

    assert push(appconfig, path, target="p13n/staging/main") == 1
    assert push(appconfig, path, "--strategy", "no-such-strategy") == 1

    err = capsys.readouterr().err
    assert "no AppConfig environment 'staging'" in err
    assert "no AppConfig deployment strategy 'no-such-strategy'" in err
    assert appconfig.fake.writes == before  # no version, no deployment


def test_wait_follows_the_deployment_to_complete(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    appconfig.fake.steps = 3

    code = push(appconfig, write(tmp_path, VALID), "--wait", "--poll-seconds", "0.01")

    assert code == 0
    (deployment,) = appconfig.fake.deployments(appconfig.application_id, appconfig.environment_id)
    assert deployment.polls == 3
    assert "deployment 1: COMPLETE" in capsys.readouterr().out


def test_wait_exits_1_when_the_deployment_rolls_back(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    appconfig.fake.steps = 2
    appconfig.fake.outcome = "ROLLED_BACK"

    code = push(appconfig, write(tmp_path, VALID), "--wait", "--poll-seconds", "0.01")

    assert code == 1
    assert "deployment 1: ROLLED_BACK" in capsys.readouterr().out


def test_a_second_push_makes_the_next_version_and_deployment(
    appconfig: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push(appconfig, write(tmp_path, VALID)) == 0
    second = write(tmp_path, {**VALID, "version": "pushed-2"}, "second.json")

    assert push(appconfig, second) == 0

    versions = appconfig.fake.versions(appconfig.application_id, appconfig.profile_id)
    assert [json.loads(v.content)["version"] for v in versions] == ["pushed-1", "pushed-2"]
    assert "hosted configuration version 2, deployment 2" in capsys.readouterr().out
