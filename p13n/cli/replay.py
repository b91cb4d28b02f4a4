"""``p13n replay``: the arguments, the signals that stop a replay, its progress bar and its summary
line (the replay itself is ``consumers.replay``)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from consumers.replay import ReplaySummary, replay
from p13n.cli.common import EXIT_INTERRUPTED, Commands, config_of, with_config
from schemas.config import Config
from schemas.errors import ConfigError


def add_command(commands: Commands) -> None:
    add_replay_command(commands, with_config, config_of)


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; UTC unless it carries an offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def add_replay_command(
    commands: Commands,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    load_config: Callable[[argparse.Namespace], Config],
) -> argparse.ArgumentParser:
    """Add ``replay`` to the ``p13n`` sub-commands. ``with_config`` adds the shared
    ``--config``/``--data-dir`` options; ``load_config`` turns parsed arguments into a Config."""
    command = with_config(
        commands.add_parser(
            "replay",
            help="send archived events through one event target again",
            description="Send the archive, or the sample project's Firehose output, through "
            "one event target again: same retries and dead letters as live, resumable.",
        )
    )
    command.add_argument(
        "--source",
        required=True,
        help="the archive, or the sample project's Firehose output: file://DIR, a path, "
        "or s3://BUCKET/PREFIX",
    )
    command.add_argument("--target", required=True, help="target name, or namespace/name")
    command.add_argument("--namespace", help="the target's namespace (when names repeat)")
    command.add_argument(
        "--from",
        dest="start",
        metavar="ISO",
        type=parse_time,
        help="receivedAt at or after (ISO 8601, UTC)",
    )
    command.add_argument(
        "--to", dest="end", metavar="ISO", type=parse_time, help="receivedAt before (ISO 8601)"
    )
    command.add_argument(
        "--event-type", help="only records with at least one event of this type (sent whole)"
    )
    command.add_argument("--rate", type=float, metavar="N", help="at most N records per second")
    command.add_argument(
        "--dry-run", action="store_true", help="read, filter and count; deliver nothing"
    )
    command.add_argument(
        "--resume", action="store_true", help="continue where the same replay stopped"
    )

    def run(args: argparse.Namespace) -> int:
        return cmd_replay(args, load_config(args))

    command.set_defaults(func=run)
    return command


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be positive")
    if args.source.startswith("file://"):
        local: str | None = args.source.removeprefix("file://")
    else:
        local = None if "://" in args.source else args.source
    if local is not None and not os.path.exists(local):
        # Reading nothing from a mistyped path would look like a replay of an empty window.
        raise ConfigError(f"--source {args.source}: no such file or folder")
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = ProgressBar()
    try:
        summary = replay(
            args.source,
            args.target,
            config,
            namespace=args.namespace,
            start=args.start,
            end=args.end,
            event_type=args.event_type,
            rate=args.rate,
            dry_run=args.dry_run,
            resume=args.resume,
            on_progress=progress,
            stop=stop,
        )
    finally:
        progress.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(describe(summary))
    return EXIT_INTERRUPTED if summary.interrupted else 0


class ProgressBar:
    """A replay's progress on the terminal (nothing when stderr is no terminal); made at the
    first report, so a replay that fails to start draws none."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._counted = 0

    def __call__(self, summary: ReplaySummary) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(desc="replay", unit=" records", disable=None, leave=True)
        self._bar.update(summary.read - self._counted)
        self._counted = summary.read
        self._bar.set_postfix(
            matched=summary.matched,
            delivered=summary.delivered,
            dead=summary.dead_lettered,
            refresh=False,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def describe(summary: ReplaySummary) -> str:
    """The line ``p13n replay`` ends with."""
    text = (
        f"replay {summary.source} -> {summary.target}: read {summary.read}, matched "
        f"{summary.matched}, delivered {summary.delivered}, dead-lettered {summary.dead_lettered}"
    )
    if summary.skipped:
        text += f", skipped {summary.skipped} already replayed"
    text += f" in {summary.seconds:.1f}s"
    if summary.dry_run:
        text += " (dry run: nothing delivered)"
    if summary.interrupted:
        text += " (interrupted: run again with --resume to continue)"
    return text
