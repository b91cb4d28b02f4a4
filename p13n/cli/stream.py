"""``p13n stream tail``: look into the stream (the printing itself is ``p13n.cli.tail``)."""

from __future__ import annotations

import argparse
import signal
import sys

from p13n.cli.common import Commands, config_of, positive, with_config


def add_command(commands: Commands) -> None:
    stream = commands.add_parser("stream", help="look into the stream")
    stream_commands = stream.add_subparsers(dest="stream_command", required=True)
    tail = with_config(
        stream_commands.add_parser("tail", help="print decoded records as JSON lines")
    )
    tail.add_argument("--from-start", action="store_true", help="from the oldest retained record")
    tail.add_argument("--limit", type=positive, help="stop after N records (N ≥ 1)")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new records")
    tail.set_defaults(func=cmd_stream_tail)


def cmd_stream_tail(args: argparse.Namespace) -> int:
    from p13n.cli.tail import tail
    from streams.factory import build_reader

    reader = build_reader(config_of(args))
    # Ctrl-C / SIGTERM end a --follow cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        tail(reader, sys.stdout, from_start=args.from_start, follow=args.follow, limit=args.limit)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    return 0
