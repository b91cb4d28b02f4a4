"""``p13n config push``: a validated config file becomes an AppConfig deployment.

The steps, each one call to the AppConfig control plane (``aws.clients.client("appconfig")``):

1. Validate the file exactly as the service loads a config (``parse_config_text``): an invalid
   file raises ``ConfigError`` (exit 2 with every reason) before any call is made.
2. Resolve ``APPLICATION/ENVIRONMENT/PROFILE``: each part is an id or a name (ListApplications,
   ListEnvironments, ListConfigurationProfiles); one that matches nothing, or a name shared by
   several, is a ``NotFound`` naming what exists (exit 1).
3. CreateHostedConfigurationVersion with the file's bytes unchanged, as ``application/json``.
4. StartDeployment of that version with the deployment strategy: a predefined id
   (``AppConfig.AllAtOnce`` by default, ``AppConfig.Linear50PercentEvery30Seconds``, ...) is
   used as is; anything else is an id or name looked up with ListDeploymentStrategies.
5. With ``--wait``: GetDeployment every ``--poll-seconds`` until COMPLETE (exit 0) or
   ROLLED_BACK / REVERTED (exit 1), with a progress bar of its PercentageComplete.

botocore errors are translated with ``aws.errors.translate`` (e.g. ResourceNotFoundException
→ ``NotFound``), so the CLI prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from aws.clients import client
from aws.errors import translate
from schemas.config import parse_config_text
from schemas.errors import InvalidRequest, NotFound
from schemas.sources import FileSource

DEFAULT_STRATEGY = "AppConfig.AllAtOnce"
PREDEFINED_PREFIX = "AppConfig."  # the ids of AWS's predefined deployment strategies
CONTENT_TYPE = "application/json"
SUCCEEDED = frozenset({"COMPLETE"})
FAILED = frozenset({"ROLLED_BACK", "REVERTED"})


@dataclass(frozen=True)
class Target:
    """Where a config goes, as given: each part an id or a name."""

    application: str
    environment: str
    profile: str

    @classmethod
    def parse(cls, spec: str) -> Target:
        parts = spec.split("/")
        if len(parts) != 3 or not all(parts):
            raise InvalidRequest(
                f"expected --appconfig APPLICATION/ENVIRONMENT/PROFILE, got {spec}"
            )
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.application}/{self.environment}/{self.profile}"


@dataclass(frozen=True)
class Pushed:
    """The ids a push resolved and the numbers it created."""

    application_id: str
    environment_id: str
    profile_id: str
    strategy_id: str
    version_number: int
    deployment_number: int


def push(
    appconfig: Any,
    target: Target,
    content: bytes,
    *,
    strategy: str = DEFAULT_STRATEGY,
    description: str | None = None,
) -> Pushed:
    """Create a hosted version holding ``content`` and start deploying it (steps 2 to 4)."""
    application_id = _resolve(
        "application", target.application, _items(appconfig, "list_applications")
    )
    environment_id = _resolve(
        "environment",
        target.environment,
        _items(appconfig, "list_environments", ApplicationId=application_id),
    )
    profile_id = _resolve(
        "configuration profile",
        target.profile,
        _items(appconfig, "list_configuration_profiles", ApplicationId=application_id),
    )
    strategy_id = (
        strategy
        if strategy.startswith(PREDEFINED_PREFIX)
        else _resolve(
            "deployment strategy", strategy, _items(appconfig, "list_deployment_strategies")
        )
    )
    described = {"Description": description} if description else {}
    version = _call(
        appconfig.create_hosted_configuration_version,
        "appconfig CreateHostedConfigurationVersion",
        ApplicationId=application_id,
        ConfigurationProfileId=profile_id,
        Content=content,
        ContentType=CONTENT_TYPE,
        **described,
    )
    deployment = _call(
        appconfig.start_deployment,
        "appconfig StartDeployment",
        ApplicationId=application_id,
        EnvironmentId=environment_id,
        DeploymentStrategyId=strategy_id,
        ConfigurationProfileId=profile_id,
        ConfigurationVersion=str(version["VersionNumber"]),
        **described,
    )
    return Pushed(
        application_id,
        environment_id,
        profile_id,
        strategy_id,
        int(version["VersionNumber"]),
        int(deployment["DeploymentNumber"]),
    )


def wait(
    appconfig: Any,
    pushed: Pushed,
    *,
    poll_seconds: float,
    on_progress: Callable[[str, float], None] = lambda state, percent: None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll GetDeployment until the deployment is COMPLETE or rolled back; the final state."""
    while True:
        deployment = _call(
            appconfig.get_deployment,
            "appconfig GetDeployment",
            ApplicationId=pushed.application_id,
            EnvironmentId=pushed.environment_id,
            DeploymentNumber=pushed.deployment_number,
        )
        state = str(deployment["State"])
        on_progress(state, float(deployment.get("PercentageComplete", 0.0)))
        if state in SUCCEEDED or state in FAILED:
            return state
        sleep(poll_seconds)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The subcommand: validate, push, optionally wait. 0 deployed (or started), 1 failed."""
    out = out or sys.stdout
    target = Target.parse(args.appconfig)
    content = FileSource(args.file).read()
    config = parse_config_text(content, source=args.file)  # ConfigError: exit 2, nothing sent
    appconfig = client("appconfig", region=args.region, endpoint_url=args.endpoint_url)
    pushed = push(appconfig, target, content, strategy=args.strategy, description=args.description)
    print(
        f"{args.file} ({config.summary()}) pushed to {target}: hosted configuration version "
        f"{pushed.version_number}, deployment {pushed.deployment_number} "
        f"(strategy {pushed.strategy_id})",
        file=out,
    )
    if not args.wait:
        return 0
    from tqdm import tqdm

    with tqdm(total=100, desc=f"deployment {pushed.deployment_number}", unit="%") as bar:

        def show(state: str, percent: float) -> None:
            bar.set_postfix_str(state)
            bar.update(max(0.0, percent - bar.n))

        state = wait(appconfig, pushed, poll_seconds=args.poll_seconds, on_progress=show)
    print(f"deployment {pushed.deployment_number}: {state}", file=out)
    return 0 if state in SUCCEEDED else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--appconfig",
        required=True,
        metavar="APP/ENV/PROFILE",
        help="application, environment and configuration profile (ids or names)",
    )
    parser.add_argument("file", help="the config file (JSON)")
    parser.add_argument(
        "--strategy",
        default=DEFAULT_STRATEGY,
        help=f"deployment strategy id or name (default: {DEFAULT_STRATEGY})",
    )
    parser.add_argument("--description", help="description of the version and the deployment")
    parser.add_argument(
        "--wait", action="store_true", help="wait until the deployment completes or rolls back"
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=5.0, help="GetDeployment interval with --wait"
    )
    parser.add_argument("--region", help="AWS region (default: the environment's)")
    parser.add_argument(
        "--endpoint-url", help="AppConfig endpoint (default: AWS_ENDPOINT_URL_APPCONFIG or AWS)"
    )


def _call(operation: Callable[..., Any], what: str, **params: Any) -> dict[str, Any]:
    try:
        return operation(**params)  # type: ignore[no-any-return]
    except Exception as exc:
        raise translate(exc, what) from exc


def _items(appconfig: Any, operation: str, **params: Any) -> list[Mapping[str, Any]]:
    what = "appconfig " + "".join(word.title() for word in operation.split("_"))
    try:
        pages = appconfig.get_paginator(operation).paginate(**params)
        return [item for page in pages for item in page.get("Items", [])]
    except Exception as exc:
        raise translate(exc, what) from exc


def _resolve(kind: str, wanted: str, items: Iterable[Mapping[str, Any]]) -> str:
    """The id of the one item whose ``Id`` is ``wanted``, else whose ``Name`` is."""
    items = list(items)
    for item in items:
        if item.get("Id") == wanted:
            return str(item["Id"])
    named = [item for item in items if item.get("Name") == wanted]
    if len(named) == 1:
        return str(named[0]["Id"])
    if named:
        ids = ", ".join(str(item["Id"]) for item in named)
        raise NotFound(f"several AppConfig {kind}s are named '{wanted}' ({ids}): give the id")
    known = ", ".join(f"{item.get('Name')} ({item.get('Id')})" for item in items) or "none"
    raise NotFound(f"no AppConfig {kind} '{wanted}' (by id or name); there are: {known}")
