"""The ``p13n`` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from schemas.config import Config, validate_document
from schemas.errors import ConfigError, P13nError, Unavailable
from schemas.sources import ConfigHolder, FileSource, source_for

if TYPE_CHECKING:
    from consumers.supervisor import ConsumerSet
    from p13n.metrics import Metrics

EXIT_INVALID = 2
EXIT_NO_PORT = 3  # as uvicorn exits when it cannot bind


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default (not the empty ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _holder(args: argparse.Namespace) -> ConfigHolder:
    """The config every command uses, found the way ``serve`` finds it: ``--config``, else
    ``$P13N_CONFIG``, else the built-in one; ``--data-dir``, else ``$P13N_DATA_DIR``, else the
    config's ``dataDir``. Says on stderr which it took, so a command never works on another
    config or data folder than the operator thinks."""
    data_dir = getattr(args, "data_dir", None) or os.environ.get("P13N_DATA_DIR") or None

    def adjust(config: Config) -> Config:
        return config.with_data_dir(data_dir) if data_dir else config

    source = source_for(args.config)
    holder = ConfigHolder(source, adjust=adjust)
    origin = (
        "--config" if args.config else "$P13N_CONFIG" if source.name != "builtin" else "built-in"
    )
    folder = os.path.abspath(holder.current.data_dir)
    # A folder nothing ever ran in is the usual sign of the wrong --data-dir or config.
    missing = "" if os.path.isdir(folder) else " (does not exist yet)"
    print(f"p13n: config {source.name} ({origin}), data folder {folder}{missing}", file=sys.stderr)
    return holder


def _listen(host: str, port: int) -> socket.socket:
    """The service's listening socket, bound before anything else starts: a serve that cannot
    have its port exits here, before it runs any consumer group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise Unavailable(
            f"cannot listen on {host}:{port}: {exc.strerror}", code="AddressInUse"
        ) from exc
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from p13n import logs
    from web.protocol import JsonErrorsProtocol  # malformed requests get the JSON error body

    logs.configure(args.log_level)
    # Validate before forking workers: a bad config fails here, at once, with its reasons.
    holder = _holder(args)
    if args.config:
        os.environ["P13N_CONFIG"] = args.config
    if args.data_dir:
        os.environ["P13N_DATA_DIR"] = args.data_dir
    try:
        sock = _listen(args.host, args.port)
    except Unavailable as exc:
        print(f"p13n: {exc.message}", file=sys.stderr)
        return EXIT_NO_PORT
    # After a graceful shutdown uvicorn re-raises the signal that stopped it; with the default
    # handler SIGTERM would then kill the process (exit -15) although the queue was drained.
    # A SIGTERM is an orderly stop: exit 0 (also when it comes before uvicorn is listening).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.workers > 1:
        # Workers are fresh interpreters: they set up the same JSON logs from this variable.
        os.environ["P13N_LOG_LEVEL"] = args.log_level
        # Workers are separate processes; the consumers run once, here in the parent, which
        # follows config changes for them itself (the workers have holders of their own).
        consumers = _embedded_consumers(args, holder, None)
        if consumers is not None:
            holder.start()
        try:
            uvicorn.run(
                "p13n.app:app_from_environment",
                factory=True,
                fd=sock.fileno(),
                workers=args.workers,
                http=JsonErrorsProtocol,
                log_config=None,
                access_log=False,
            )
        finally:
            holder.stop()
            if consumers is not None:
                consumers.stop()
            sock.close()
        return 0
    from p13n.app import create_app
    from p13n.metrics import Metrics

    metrics = Metrics()
    running: list[ConsumerSet] = []
    app = create_app(
        holder,
        metrics=metrics,
        consumers=(lambda: running[0].health() if running else {})
        if _runs_consumers(args, holder.current)
        else None,
    )
    consumers = _embedded_consumers(args, holder, metrics)
    if consumers is not None:
        running.append(consumers)
    try:
        uvicorn.run(
            app,
            fd=sock.fileno(),
            http=JsonErrorsProtocol,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    finally:
        if consumers is not None:
            consumers.stop()
        sock.close()
    return 0


def _runs_consumers(args: argparse.Namespace, config: Config) -> bool:
    return not args.no_consumers and config.stream.type == "embedded"


def _embedded_consumers(
    args: argparse.Namespace, holder: ConfigHolder, metrics: Metrics | None
) -> ConsumerSet | None:
    """In embedded mode ``serve`` also runs the consumer groups, unless told not to. A group
    another process runs on the same data folder waits for it (standby) and takes over."""
    config = holder.current
    if not _runs_consumers(args, config):
        return None
    from consumers.supervisor import ConsumerSet
    from streams.factory import build_writer

    # The consumers' readers need the log to exist; with --workers N it is otherwise only
    # created later, by the workers. Opening a writer creates it (idempotently).
    build_writer(config).close()
    consumers = ConsumerSet(config, metrics=metrics)
    consumers.follow(holder)
    consumers.start(wait=True)
    return consumers


def cmd_consume(args: argparse.Namespace) -> int:
    from consumers.supervisor import ConsumerSet
    from p13n import logs

    logs.configure(args.log_level)
    holder = _holder(args)
    consumers = ConsumerSet(holder.current, targets=args.target)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    # Refuses (exit 1, naming the other runner) unless --wait: then it is a standby.
    consumers.start(wait=args.wait)
    consumers.follow(holder)
    holder.start()
    stopping.wait()
    holder.stop()
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
    from web.openapi import build_spec

    print(json.dumps(build_spec(_holder(args).current), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="p13n", description="Real-time personalization layer.", formatter_class=_Formatter
    )
    commands = root.add_subparsers(dest="command", required=True)
    _with_defaults_shown(commands)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            help="config file, or appconfig://APP/ENV/PROFILE (default: $P13N_CONFIG, else built-in)",
        )
        p.add_argument(
            "--data-dir",
            help="runtime data folder (default: $P13N_DATA_DIR, else the config's dataDir)",
        )
        return p

    serve = with_config(commands.add_parser("serve", help="run the HTTP service"))
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=_positive, default=1, help="HTTP worker processes")
    serve.add_argument("--log-level", default="info", help="debug, info, warning or error")
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
    consume.add_argument("--log-level", default="info", help="debug, info, warning or error")
    consume.add_argument(
        "--wait",
        action="store_true",
        help="when another process runs a group on this data folder, stand by and take over "
        "when it stops (default: refuse, exit 1)",
    )
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
    tail.add_argument("--limit", type=_positive, help="stop after N records (N ≥ 1)")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new records")
    tail.set_defaults(func=cmd_stream_tail)
    return root


def _with_defaults_shown(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Every parser made from ``commands`` (and from their own sub-commands) shows defaults."""
    make = commands.add_parser

    def add_parser(*args: object, **kwargs: object) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", _Formatter)
        made: argparse.ArgumentParser = make(*args, **kwargs)  # type: ignore[arg-type]
        add_subparsers = made.add_subparsers

        def nested(**options: object) -> argparse._SubParsersAction:  # type: ignore[type-arg]
            inner = add_subparsers(**options)  # type: ignore[call-overload]
            _with_defaults_shown(inner)
            return inner

        made.add_subparsers = nested  # type: ignore[method-assign]
        return made

    commands.add_parser = add_parser  # type: ignore[method-assign]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
