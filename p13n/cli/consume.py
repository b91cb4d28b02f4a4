"""``p13n consume``: the consumer groups, without the HTTP service."""

from __future__ import annotations

import argparse
import signal
import threading

from p13n.cli.common import Commands, holder, with_config


def add_command(commands: Commands) -> None:
    consume = with_config(commands.add_parser("consume", help="run the consumer groups"))
    consume.add_argument(
        "--target", action="append", help="only this target (name or namespace/name); repeatable"
    )
    consume.add_argument("--log-level", default="info", help="debug, info, warning or error")
    consume.add_argument(
        "--wait",
        action="store_true",
        help="when another process runs a group on this data folder, stand by and take over "
        "when it stops (default: refuse, exit 1)",
    )
    consume.set_defaults(func=cmd_consume)


def cmd_consume(args: argparse.Namespace) -> int:
    from consumers.supervisor import ConsumerSet
    from p13n import logs

    logs.configure(args.log_level)
    config = holder(args)
    consumers = ConsumerSet(config.current, targets=args.target)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    # Refuses (exit 1, naming the other runner) unless --wait: then it is a standby.
    consumers.start(wait=args.wait)
    consumers.follow(config)
    config.start()
    stopping.wait()
    config.stop()
    # Finish the batch in hand, checkpoint it, exit.
    consumers.stop()
    return 0
