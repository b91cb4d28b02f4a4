"""The HTTP API as an AWS Lambda function: ``handler(event, context)``.

Contract:

* Events. API Gateway HTTP API (payload 2.0), API Gateway REST API (proxy integration, 1.0)
  and Lambda function URLs, translated to and from ASGI by Mangum; base64 request bodies are
  decoded, and the answer is the matching proxy response (JSON bodies as text).
* Environment. ``P13N_CONFIG``: a config file in the package, or
  ``appconfig://APPLICATION/ENVIRONMENT/PROFILE`` read from the AppConfig Lambda extension
  (``P13N_APPCONFIG_AGENT`` overrides its ``http://localhost:2772``); ``P13N_DATA_DIR``
  overrides the config's data folder (only ``/tmp`` is writable on Lambda).
* Cold start. Nothing is built at import. The first invocation of a container loads and
  validates the config, builds the app (``p13n.app.create_app``: Kinesis writer, producer,
  resolvers) and runs its lifespan startup (producer thread, config polling) — once; later
  invocations reuse all of it, and a config deployed to AppConfig is picked up by the polling
  as in ``p13n serve``. The lifespan is never shut down: Lambda freezes or discards the
  container with it running.
* The stream must be Kinesis: an embedded log in a container's ``/tmp`` would vanish with the
  container. That, or any other failure to start (invalid or unreadable config), is logged and
  answered 503 ``{"type": "Unavailable", "code": "ServiceUnavailable", ...}``; the next
  invocation tries to start again.
* Durability. A 202 from ``POST /events`` is returned only after its record is durable in
  Kinesis: the producer resolves ``put()`` after PutRecords succeeded, and Mangum runs the
  request to completion before the handler returns. Experiment exposures are queued without
  waiting (as in ``p13n serve``), so one may still be queued when the container is frozen; it
  is written when the container thaws, or lost with a discarded container.
* Logs. Powertools ``Logger`` (service ``p13n-api``) with the Lambda context injected; the
  rooms' own loggers are routed through it, so their lines carry the request id too. The
  per-request access lines are flushed before each invocation returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from mangum import Mangum
from starlette.types import ASGIApp, Message

from p13n.logs import AccessLog
from schemas.errors import ConfigError, P13nError
from schemas.sources import ConfigHolder
from web.errors import error_response

SERVICE = "p13n-api"
# The rooms' top-level loggers: routed through the Powertools logger once the app is built.
APP_LOGGERS = frozenset({"p13n", "schemas", "streams", "ingest", "query"})

logger = Logger(service=SERVICE)


class LifespanFailed(P13nError):
    """The app's lifespan startup raised (its message is the app's own)."""


class _OpenLifespan:
    """An ASGI lifespan started on a loop and kept open between invocations.

    Mangum's ``lifespan="auto"`` or ``"on"`` runs startup *and* shutdown around every
    invocation; our lifespan starts a producer thread and config polling that must live as
    long as the container (and a producer cannot be started twice). So Mangum runs with
    ``lifespan="off"`` and this object sends ``lifespan.startup`` once; the app's lifespan
    task then waits for a ``lifespan.shutdown`` that only ``close`` (tests) ever sends.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        await self._outbox.put(message)

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}

        async def run() -> None:
            await self._app(scope, self._receive, self._send)

        self._task = asyncio.get_running_loop().create_task(run())
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._outbox.get()
        if answer["type"] != "lifespan.startup.complete":
            # Starlette sends startup.failed, then raises; the task's error is in the message.
            await asyncio.gather(self._task, return_exceptions=True)
            raise LifespanFailed(str(answer.get("message") or "lifespan startup failed"))

    async def close(self) -> None:
        """Shut the lifespan down: the producer drains its queue, polling stops."""
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._outbox.get()
        await self._task


class _Running:
    """One built app on its own event loop, lifespan started."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        adapter: Mangum,
        lifespan: _OpenLifespan,
        access_log: AccessLog,
    ) -> None:
        self.loop = loop
        self.adapter = adapter
        self.lifespan = lifespan
        self.access_log = access_log

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        # Mangum and its HTTP cycle run on the thread's current loop; make sure it is ours
        # (the Lambda runtime never changes it, a test process might).
        asyncio.set_event_loop(self.loop)
        try:
            return self.adapter(event, context)
        finally:
            self.access_log.flush()  # a frozen container must not sit on log lines

    def close(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.lifespan.close())
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()


def _holder_from_environment() -> ConfigHolder:
    from p13n.app import holder_from_environment

    return holder_from_environment()


class LambdaContainer:
    """What one Lambda container keeps between invocations: the app, built on first use.

    Lambda runs one invocation at a time per container and keeps the interpreter (and so
    module globals) alive between them; an object held by the module is therefore the
    standard place for work done once per container. This is the only such state here, and
    it holds nothing until the first invocation. ``load`` yields the config holder (the
    environment's by default); it runs once per successful start.
    """

    def __init__(self, load: Callable[[], ConfigHolder] = _holder_from_environment) -> None:
        self._load = load
        self._running: _Running | None = None
        self._saved_loggers: dict[str, tuple[int, list[logging.Handler], bool]] = {}

    @property
    def started(self) -> bool:
        return self._running is not None

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if self._running is None:
            try:
                self._running = self._start()
            except P13nError as exc:
                logger.error(
                    "cold start failed; answering 503 until a start succeeds",
                    extra={"reason": exc.message, "code": exc.code},
                )
                return _unavailable(event, context)
            except Exception:
                logger.exception("cold start failed; answering 503 until a start succeeds")
                return _unavailable(event, context)
        return self._running(event, context)

    def _start(self) -> _Running:
        holder = self._load()
        config = holder.current
        if config.stream.type != "kinesis":
            raise ConfigError(
                f"on Lambda the stream must be kinesis, not {config.stream.type}: an embedded "
                "log in the container's /tmp is lost with the container"
            )
        from p13n.app import create_app

        self._route_app_logs()
        access_log = AccessLog(enabled=True)
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            app = create_app(holder, access_log=access_log)
            lifespan = _OpenLifespan(app)
            loop.run_until_complete(lifespan.start())
        except BaseException:
            asyncio.set_event_loop(None)
            loop.close()
            raise
        logger.info("cold start done", extra={"config": config.summary()})
        # Mangum's ASGI type wants a coroutine function; Starlette's ASGIApp says awaitable.
        handler = Mangum(app, lifespan="off")  # type: ignore[arg-type]
        return _Running(loop, handler, lifespan, access_log)

    def _route_app_logs(self) -> None:
        """Send the rooms' log records through the Powertools logger (JSON, Lambda context)."""
        for name in APP_LOGGERS:
            named = logging.getLogger(name)
            self._saved_loggers.setdefault(
                name, (named.level, list(named.handlers), named.propagate)
            )
        copy_config_to_registered_loggers(source_logger=logger, include=set(APP_LOGGERS))

    def close(self) -> None:
        """Shut the app down and forget it (tests; Lambda itself never calls this)."""
        running, self._running = self._running, None
        try:
            if running is not None:
                running.close()
        finally:
            for name, (level, handlers, propagate) in self._saved_loggers.items():
                named = logging.getLogger(name)
                named.setLevel(level)
                named.handlers[:] = handlers
                named.propagate = propagate
            self._saved_loggers.clear()


def _unavailable(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The 503 answer, shaped for whichever kind of event came in."""
    response = error_response(
        503,
        "Unavailable",
        "ServiceUnavailable",
        "The service could not start; the function's logs say why",
    )
    # A loop of its own, closed after: no app loop exists when the start failed.
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return Mangum(response, lifespan="off")(dict(event), context)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


container = LambdaContainer()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return container(event, context)
