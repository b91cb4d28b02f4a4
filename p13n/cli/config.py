"""``p13n config validate`` and ``p13n config push``: config documents checked and deployed."""

from __future__ import annotations

import argparse
import json
import sys

from p13n.cli.common import EXIT_INVALID, Commands
from p13n.cli.config_push import add_arguments as add_push_arguments
from p13n.cli.config_push import run as run_push
from schemas.config import load_config, validate_document
from schemas.errors import ConfigError
from schemas.sources import FileSource


def add_command(commands: Commands) -> None:
    config = commands.add_parser("config", help="work with config documents")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check a config file")
    validate.add_argument("path")
    validate.set_defaults(func=cmd_config_validate)
    push = config_commands.add_parser(
        "push",
        help="validate a config file and deploy it through AWS AppConfig",
        description="Validate FILE (invalid: exit 2, nothing sent), create a hosted "
        "configuration version of it and start a deployment; --wait follows it to the end.",
    )
    add_push_arguments(push)
    push.set_defaults(func=run_push)


def cmd_config_validate(args: argparse.Namespace) -> int:
    source = FileSource(args.path)
    try:
        document = json.loads(source.read())
    except json.JSONDecodeError as exc:
        print(
            f"{args.path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_INVALID
    errors = validate_document(document)
    if errors:
        print(f"{args.path}: {len(errors)} error(s)", file=sys.stderr)
        for path, reason in errors:
            print(f"  {path}: {reason}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.path}: valid — {load_config(document, source=args.path).summary()}")
    return 0
