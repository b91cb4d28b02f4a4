"""What every ``p13n`` sub-command shares: the help formatter, the ``--config``/``--data-dir``
options and the config they find, argument types and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from schemas.config import Config
from schemas.sources import ConfigHolder, source_for

EXIT_INVALID = 2
EXIT_NO_PORT = 3  # as uvicorn exits when it cannot bind
EXIT_INTERRUPTED = 130

# argparse's ``add_subparsers()`` result; its class is private.
Commands = Any


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default (not the empty ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def with_defaults_shown(commands: Commands) -> None:
    """Every parser made from ``commands`` (and from their own sub-commands) shows defaults."""
    make = commands.add_parser

    def add_parser(*args: object, **kwargs: object) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", Formatter)
        made: argparse.ArgumentParser = make(*args, **kwargs)
        add_subparsers = made.add_subparsers

        def nested(**options: object) -> Commands:
            inner = add_subparsers(**options)  # type: ignore[call-overload]
            with_defaults_shown(inner)
            return inner

        made.add_subparsers = nested  # type: ignore[method-assign]
        return made

    commands.add_parser = add_parser


def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options that say which config and data folder a command works on."""
    parser.add_argument(
        "--config",
        help="config file, or appconfig://APP/ENV/PROFILE (default: $P13N_CONFIG, else built-in)",
    )
    parser.add_argument(
        "--data-dir",
        help="runtime data folder (default: $P13N_DATA_DIR, else the config's dataDir)",
    )
    return parser


def holder(args: argparse.Namespace) -> ConfigHolder:
    """The config every command uses, found the way ``serve`` finds it: ``--config``, else
    ``$P13N_CONFIG``, else the built-in one; ``--data-dir``, else ``$P13N_DATA_DIR``, else the
    config's ``dataDir``. Says on stderr which it took, so a command never works on another
    config or data folder than the operator thinks."""
    data_dir = getattr(args, "data_dir", None) or os.environ.get("P13N_DATA_DIR") or None

    def adjust(config: Config) -> Config:
        return config.with_data_dir(data_dir) if data_dir else config

    source = source_for(args.config)
    found = ConfigHolder(source, adjust=adjust)
    origin = (
        "--config" if args.config else "$P13N_CONFIG" if source.name != "builtin" else "built-in"
    )
    folder = os.path.abspath(found.current.data_dir)
    # A folder nothing ever ran in is the usual sign of the wrong --data-dir or config.
    missing = "" if os.path.isdir(folder) else " (does not exist yet)"
    print(f"p13n: config {source.name} ({origin}), data folder {folder}{missing}", file=sys.stderr)
    return found


def config_of(args: argparse.Namespace) -> Config:
    """The current config of ``holder(args)``, for commands that read it once."""
    return holder(args).current


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
