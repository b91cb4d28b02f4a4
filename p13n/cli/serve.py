"""``p13n serve``: the HTTP service, and in embedded mode the consumer groups beside it."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

from p13n.cli.common import EXIT_NO_PORT, Commands, holder, positive, with_config
from schemas.config import Config
from schemas.errors import Unavailable
from schemas.sources import ConfigHolder

if TYPE_CHECKING:
    from consumers.supervisor import ConsumerSet
    from p13n.metrics import Metrics


def add_command(commands: Commands) -> None:
    serve = with_config(commands.add_parser("serve", help="run the HTTP service"))
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=positive, default=1, help="HTTP worker processes")
    serve.add_argument("--log-level", default="info", help="debug, info, warning or error")
    serve.add_argument(
        "--no-consumers",
        action="store_true",
        help="embedded mode: don't run the event targets here",
    )
    serve.set_defaults(func=cmd_serve)


def listen(host: str, port: int) -> socket.socket:
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
    from p13n import logs

    logs.configure(args.log_level)
    # Validate before forking workers: a bad config fails here, at once, with its reasons.
    config = holder(args)
    if args.config:
        os.environ["P13N_CONFIG"] = args.config
    if args.data_dir:
        os.environ["P13N_DATA_DIR"] = args.data_dir
    try:
        sock = listen(args.host, args.port)
    except Unavailable as exc:
        print(f"p13n: {exc.message}", file=sys.stderr)
        return EXIT_NO_PORT
    # After a graceful shutdown uvicorn re-raises the signal that stopped it; with the default
    # handler SIGTERM would then kill the process (exit -15) although the queue was drained.
    # A SIGTERM is an orderly stop: exit 0 (also when it comes before uvicorn is listening).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.workers > 1:
            _serve_workers(args, config, sock)
        else:
            _serve_here(args, config, sock)
    finally:
        sock.close()
    return 0


def _serve_workers(args: argparse.Namespace, config: ConfigHolder, sock: socket.socket) -> None:
    import uvicorn

    from web.protocol import JsonErrorsProtocol  # malformed requests get the JSON error body

    # Workers are fresh interpreters: they set up the same JSON logs from this variable.
    os.environ["P13N_LOG_LEVEL"] = args.log_level
    # Workers are separate processes; the consumers run once, here in the parent, which
    # follows config changes for them itself (the workers have holders of their own).
    consumers = _embedded_consumers(args, config, None)
    if consumers is not None:
        config.start()
    try:
        uvicorn.run(
            "p13n.app:app_from_environment",
            factory=True,
            fd=sock.fileno(),
            workers=args.workers,
            http=JsonErrorsProtocol,
            log_config=None,
            access_log=False,
            proxy_headers=False,  # see _serve_here
        )
    finally:
        config.stop()
        if consumers is not None:
            consumers.stop()


def _serve_here(args: argparse.Namespace, config: ConfigHolder, sock: socket.socket) -> None:
    import uvicorn

    from p13n.app import create_app
    from p13n.metrics import Metrics
    from web.protocol import JsonErrorsProtocol  # malformed requests get the JSON error body

    metrics = Metrics()
    running: list[ConsumerSet] = []
    app = create_app(
        config,
        metrics=metrics,
        consumers=(lambda: running[0].health() if running else {})
        if _runs_consumers(args, config.current)
        else None,
    )
    consumers = _embedded_consumers(args, config, metrics)
    if consumers is not None:
        running.append(consumers)
    try:
        uvicorn.run(
            app,
            fd=sock.fileno(),
            http=JsonErrorsProtocol,
            log_config=None,
            access_log=False,
            # uvicorn's X-Forwarded-* rewrite of the client address and scheme is a layer on
            # every request, and nothing here reads either (logs carry neither; links are
            # relative).
            proxy_headers=False,
            timeout_graceful_shutdown=30,
        )
    finally:
        if consumers is not None:
            consumers.stop()


def _runs_consumers(args: argparse.Namespace, config: Config) -> bool:
    return not args.no_consumers and config.stream.type == "embedded"


def _embedded_consumers(
    args: argparse.Namespace, config: ConfigHolder, metrics: Metrics | None
) -> ConsumerSet | None:
    """In embedded mode ``serve`` also runs the consumer groups, unless told not to. A group
    another process runs on the same data folder waits for it (standby) and takes over."""
    current = config.current
    if not _runs_consumers(args, current):
        return None
    from consumers.supervisor import ConsumerSet
    from streams.factory import build_writer

    # The consumers' readers need the log to exist; with --workers N it is otherwise only
    # created later, by the workers. Opening a writer creates it (idempotently).
    build_writer(current).close()
    consumers = ConsumerSet(current, metrics=metrics)
    consumers.follow(config)
    consumers.start(wait=True)
    return consumers
