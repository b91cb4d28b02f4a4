"""``p13n openapi``: the OpenAPI document the service serves, printed."""

from __future__ import annotations

import argparse
import json

from p13n.cli.common import Commands, config_of, with_config


def add_command(commands: Commands) -> None:
    openapi = with_config(
        commands.add_parser("openapi", help="print the OpenAPI spec the service serves")
    )
    openapi.set_defaults(func=cmd_openapi)


def cmd_openapi(args: argparse.Namespace) -> int:
    from web.openapi import build_spec

    print(json.dumps(build_spec(config_of(args)), indent=2))
    return 0
