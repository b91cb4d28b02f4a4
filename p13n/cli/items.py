"""``p13n items load``: item metadata for decoration, from JSON lines or CSV
(``query.metadata.catalog`` reads, checks and writes; this prints and shows progress)."""

from __future__ import annotations

import argparse
import os
import sys

from p13n.cli.common import EXIT_INVALID, Commands, config_of, with_config

MAX_REPORTED = 20
# Below this size a load takes a moment: no progress bar.
PROGRESS_MIN_BYTES = 1024 * 1024


def add_command(commands: Commands) -> None:
    items = commands.add_parser("items", help="manage item metadata for decoration")
    item_commands = items.add_subparsers(dest="items_command", required=True)
    load_items = with_config(
        item_commands.add_parser(
            "load",
            help="load item metadata from JSON lines or CSV",
            description="Load item metadata into the namespace's store: the data dir's items.db "
            "(localdb), or its DynamoDB table when the namespace uses dynamodb only. Any bad row: "
            "nothing is loaded, exit 2.",
        )
    )
    load_items.add_argument("file", help="JSON lines (one object per line), or CSV (*.csv)")
    load_items.add_argument("--namespace", required=True, help="the items' namespace")
    load_items.add_argument(
        "--id-column", help="the id field or column (default: itemId or id; CSV also ITEM_ID)"
    )
    load_items.set_defaults(func=cmd_items_load)


def cmd_items_load(args: argparse.Namespace) -> int:
    """Prints a summary line and returns 0, or reports bad rows on stderr and returns 2 with
    nothing written."""
    from tqdm import tqdm

    from query.metadata.catalog import BadInput, ItemFile, destination, load

    into = destination(config_of(args), args.namespace)
    try:
        size = os.path.getsize(args.file)
    except OSError as exc:
        print(f"p13n: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    with tqdm(
        total=size * into.passes,
        unit="B",
        unit_scale=True,
        desc=f"items {args.namespace}",
        file=sys.stderr,
        disable=True if size < PROGRESS_MIN_BYTES else None,  # None: only on a terminal
    ) as progress:
        source = ItemFile(args.file, args.id_column, on_bytes=progress.update)
        try:
            count = load(source, into)
        except BadInput as exc:
            progress.close()
            print(f"p13n: {exc.message}; nothing loaded", file=sys.stderr)
            for number, reason in exc.problems[:MAX_REPORTED]:
                print(f"  line {number}: {reason}", file=sys.stderr)
            if len(exc.problems) > MAX_REPORTED:
                print(f"  … and {len(exc.problems) - MAX_REPORTED} more", file=sys.stderr)
            return EXIT_INVALID
    print(f"loaded {count} items into {args.namespace} ({into.describe()})")
    return 0
