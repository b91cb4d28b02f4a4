"""The ``p13n`` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from schemas.config import Config, validate_document
from schemas.errors import ConfigError, P13nError
from schemas.sources import ConfigHolder, FileSource, source_for

if TYPE_CHECKING:
    from consumers.supervisor import ConsumerSet
    from p13n.metrics import Metrics

EXIT_INVALID = 2


def _holder(args: argparse.Namespace) -> ConfigHolder:
    data_dir = getattr(args, "data_dir", None)

    def adjust(config: Config) -> Config:
        return config.with_data_dir(data_dir) if data_dir else config

    return ConfigHolder(source_for(args.config), adjust=adjust)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from p13n import logs
    from p13n.protocol import JsonErrorsProtocol  # malformed requests get the JSON error body

    logs.configure(args.log_level)
    # Validate before forking workers: a bad config fails here, at once, with its reasons.
    holder = _holder(args)
    if args.config:
        os.environ["P13N_CONFIG"] = args.config
    if args.data_dir:
        os.environ["P13N_DATA_DIR"] = args.data_dir
    # After a graceful shutdown uvicorn re-raises the signal that stopped it; with the default
    # handler SIGTERM would then kill the process (exit -15) although the queue was drained.
    # A SIGTERM is an orderly stop: exit 0 (also when it comes before uvicorn is listening).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.workers > 1:
        # Workers are fresh interpreters: they set up the same JSON logs from this variable.
        os.environ["P13N_LOG_LEVEL"] = args.log_level
        # Workers are separate processes; the consumers run once, here in the parent.
        consumers = _embedded_consumers(args, holder.current, None)
        try:
            uvicorn.run(
                "p13n.app:app_from_environment",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                http=JsonErrorsProtocol,
                log_config=None,
                access_log=False,
            )
        finally:
            if consumers is not None:
                consumers.stop()
        return 0
    from p13n.app import create_app
    from p13n.metrics import Metrics

    metrics = Metrics()
    app = create_app(holder, metrics=metrics)
    consumers = _embedded_consumers(args, holder.current, metrics)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            http=JsonErrorsProtocol,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    finally:
        if consumers is not None:
            consumers.stop()
    return 0


def _embedded_consumers(
    args: argparse.Namespace, config: Config, metrics: Metrics | None
) -> ConsumerSet | None:
    """In embedded mode ``serve`` also runs the consumer groups, unless told not to."""
    if args.no_consumers or config.stream.type != "embedded":
        return None
    from consumers.supervisor import ConsumerSet
    from streams.factory import build_writer

    # The consumers' readers need the log to exist; with --workers N it is otherwise only
    # created later, by the workers. Opening a writer creates it (idempotently).
    build_writer(config).close()
    consumers = ConsumerSet(config, metrics=metrics)
    consumers.start()
    return consumers


def cmd_consume(args: argparse.Namespace) -> int:
    from consumers.supervisor import ConsumerSet
    from p13n import logs

    logs.configure(args.log_level)
    config = _holder(args).current
    consumers = ConsumerSet(config, targets=args.target)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    consumers.start()
    stopping.wait()
    # Finish the batch in hand, checkpoint it, exit.
    consumers.stop()
    return 0


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
    from schemas.config import load_config

    print(f"{args.path}: valid — {load_config(document, source=args.path).summary()}")
    return 0


def cmd_stream_tail(args: argparse.Namespace) -> int:
    from p13n.tail import tail
    from streams.factory import build_reader

    config = _holder(args).current
    reader = build_reader(config)
    # Ctrl-C / SIGTERM end a --follow cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        tail(reader, sys.stdout, from_start=args.from_start, follow=args.follow, limit=args.limit)
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    return 0


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    from consumers.deadletters import dead_letter_store
    from consumers.supervisor import select_targets

    config = _holder(args).current
    for target in select_targets(config, args.target):
        store = dead_letter_store(target.dead_letter_uri or config.dead_letter_uri, config.data_dir)
        done = store.redriven(target.group)
        for letter in store.list(target.group):
            entry = letter.to_json()
            entry.pop("data")
            entry["bytes"] = len(letter.data)
            entry["redriven"] = letter.letter_id in done
            print(json.dumps(entry))
    return 0


def cmd_dead_letters_redrive(args: argparse.Namespace) -> int:
    from consumers.redrive import redrive
    from consumers.supervisor import ConsumerSet

    config = _holder(args).current
    consumers = ConsumerSet(config, targets=[args.target])
    for target in consumers.targets:
        summary = redrive(consumers.build(target))
        print(
            f"{target.group}: {summary.letters} letter(s) redriven: {summary.delivered} delivered, "
            f"{summary.dead_lettered} dead-lettered again"
        )
    return 0


def cmd_items_load(args: argparse.Namespace) -> int:
    from query.metadata.catalog import load_file

    return load_file(args, _holder(args).current)


def cmd_demo_seed(args: argparse.Namespace) -> int:
    from p13n.demo import seed

    return seed(args, _holder(args).current)


def cmd_openapi(args: argparse.Namespace) -> int:
    from p13n.openapi import build_spec

    print(json.dumps(build_spec(_holder(args).current), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="p13n", description="Real-time personalization layer.")
    commands = root.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            help="config file, or appconfig://APP/ENV/PROFILE (default: $P13N_CONFIG, else built-in)",
        )
        p.add_argument(
            "--data-dir", help="runtime data folder (default: the config's dataDir, .p13n)"
        )
        return p

    serve = with_config(commands.add_parser("serve", help="run the HTTP service"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--no-consumers",
        action="store_true",
        help="embedded mode: don't run the event targets here",
    )
    serve.set_defaults(func=cmd_serve)

    consume = with_config(commands.add_parser("consume", help="run the consumer groups"))
    consume.add_argument(
        "--target", action="append", help="only this target (name or namespace/name); repeatable"
    )
    consume.add_argument("--log-level", default="info")
    consume.set_defaults(func=cmd_consume)

    config = commands.add_parser("config", help="work with config documents")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check a config file")
    validate.add_argument("path")
    validate.set_defaults(func=cmd_config_validate)
    from p13n.config_push import add_arguments as add_push_arguments
    from p13n.config_push import run as run_push

    config_push = config_commands.add_parser(
        "push",
        help="validate a config file and deploy it through AWS AppConfig",
        description="Validate FILE (invalid: exit 2, nothing sent), create a hosted "
        "configuration version of it and start a deployment; --wait follows it to the end.",
    )
    add_push_arguments(config_push)
    config_push.set_defaults(func=run_push)

    letters = commands.add_parser("dead-letters", help="inspect and redrive dead letters")
    letter_commands = letters.add_subparsers(dest="letters_command", required=True)
    listing = with_config(
        letter_commands.add_parser("list", help="print dead letters as JSON lines")
    )
    listing.add_argument("--target", action="append", help="only this target; repeatable")
    listing.set_defaults(func=cmd_dead_letters_list)
    again = with_config(letter_commands.add_parser("redrive", help="send a target's letters again"))
    again.add_argument("--target", required=True, help="target name or namespace/name")
    again.set_defaults(func=cmd_dead_letters_redrive)

    from consumers.experiment_report import add_experiments_command

    add_experiments_command(commands, with_config, lambda args: _holder(args).current)

    from consumers.replay import add_replay_command

    add_replay_command(commands, with_config, lambda args: _holder(args).current)

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

    demo = commands.add_parser("demo", help="try the service with synthetic data")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    demo_seed = with_config(
        demo_commands.add_parser(
            "seed",
            help="load a synthetic catalog and post a clickstream to a running service",
        )
    )
    from p13n.demo import add_arguments as add_demo_arguments

    add_demo_arguments(demo_seed)
    demo_seed.set_defaults(func=cmd_demo_seed)

    openapi = with_config(
        commands.add_parser("openapi", help="print the OpenAPI spec the service serves")
    )
    openapi.set_defaults(func=cmd_openapi)

    stream = commands.add_parser("stream", help="look into the stream")
    stream_commands = stream.add_subparsers(dest="stream_command", required=True)
    tail = with_config(
        stream_commands.add_parser("tail", help="print decoded records as JSON lines")
    )
    tail.add_argument("--from-start", action="store_true", help="from the oldest retained record")
    tail.add_argument("--limit", type=int, help="stop after N records")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new records")
    tail.set_defaults(func=cmd_stream_tail)
    return root


def main(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
