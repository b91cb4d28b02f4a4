"""The ``p13n`` command line: one module per sub-command, each declaring its arguments beside
the function that runs it and calling into its room; ``common`` holds what they share."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from p13n.cli import (
    config,
    consume,
    dead_letters,
    demo,
    experiments,
    items,
    openapi,
    replay,
    serve,
    stream,
)
from p13n.cli.common import EXIT_INVALID, Formatter, with_defaults_shown
from schemas.errors import ConfigError, P13nError

# In the order ``p13n --help`` lists them.
COMMANDS = (serve, consume, config, dead_letters, experiments, replay, items, demo, openapi, stream)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="p13n", description="Real-time personalization layer.", formatter_class=Formatter
    )
    commands = root.add_subparsers(dest="command", required=True)
    with_defaults_shown(commands)
    for command in COMMANDS:
        command.add_command(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Every error ends as one line on stderr and a non-zero exit: 2 for bad input or config,
    1 for everything else (``P13N_DEBUG=1`` adds the traceback of an unexpected one)."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"p13n: {exc.message}", file=sys.stderr)
        for path, reason in exc.errors:
            print(f"  {path}: {reason}", file=sys.stderr)
        return EXIT_INVALID
    except P13nError as exc:
        print(f"p13n: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"p13n: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("P13N_DEBUG"):
            raise
        print(
            f"p13n: unexpected {type(exc).__name__}: {exc} (P13N_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
