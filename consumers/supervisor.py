"""Runs one consumer group per event target, each on a thread of its own, until stopped.

Used by ``p13n consume`` and, in embedded mode, by ``p13n serve``. Each group gets its own
stream reader and checkpoint connection (SQLite connections and shard cursors are not shared
between threads), so a slow or failing target holds up nobody but itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from consumers.deadletters import dead_letter_store
from consumers.runner import ConsumerMetrics, GroupConsumer, RetryPolicy
from consumers.targets import TargetContext, build_target
from schemas.codec import Codec
from schemas.config import Config, Namespace, TargetConfig
from schemas.errors import ConfigError, P13nError
from streams.base import CheckpointStore, StreamReader
from streams.checkpoints import SqliteCheckpointStore
from streams.factory import build_reader

log = logging.getLogger("p13n.consumers")


def checkpoint_path(config: Config) -> str:
    return os.path.join(config.data_dir, "checkpoints.db")


def build_checkpoints(config: Config, owner: str) -> CheckpointStore:
    """The store ``config.checkpoints`` names: SQLite in the data dir (one consuming process),
    or DynamoDB, whose shard leases let several processes share the stream (``owner`` names
    this one in them)."""
    kind = config.checkpoints.get("type", "sqlite")
    if kind == "sqlite":
        return SqliteCheckpointStore(checkpoint_path(config))
    if kind == "dynamodb":
        from streams.dynamodb_checkpoints import DynamoCheckpointStore

        return DynamoCheckpointStore.from_settings(config.checkpoints, owner)
    raise ConfigError(f"unknown checkpoints type '{kind}'")


def select_targets(config: Config, names: Iterable[str] | None = None) -> list[TargetConfig]:
    """Every target of every namespace, or those named (``name`` or ``namespace/name``)."""
    every = [t for ns in config.namespaces.values() for t in (*ns.event_targets, *_tracking(ns))]
    if not names:
        return every
    wanted = set(names)
    chosen = [t for t in every if t.name in wanted or t.group in wanted]
    unknown = wanted - {t.name for t in chosen} - {t.group for t in chosen}
    if unknown:
        raise ConfigError(f"no event target named {', '.join(sorted(unknown))}")
    return chosen


def _tracking(ns: Namespace) -> tuple[TargetConfig, ...]:
    """Experiment tracking runs wherever a recommender has experiments, without being listed."""
    recommenders = [rec for by_name in ns.recommenders.values() for rec in by_name.values()]
    if not any(rec.experiments for rec in recommenders):
        return ()
    if any(t.name == "experiments" for t in ns.event_targets):
        raise ConfigError(
            f"namespace '{ns.key}': the event target name 'experiments' is reserved for "
            "experiment tracking"
        )
    return (TargetConfig(type="experiments", name="experiments", namespace=ns.key, options={}),)


@dataclass
class _Running:
    consumer: GroupConsumer
    thread: threading.Thread


class ConsumerSet:
    def __init__(
        self,
        config: Config,
        *,
        targets: Iterable[str] | None = None,
        metrics: ConsumerMetrics | None = None,
        reader: Callable[[Config], StreamReader] = build_reader,
        checkpoints: Callable[[Config], CheckpointStore] | None = None,
    ) -> None:
        self.config = config
        self.targets = select_targets(config, targets)
        self.metrics = metrics
        self._reader = reader
        # Names this process in shard leases; unique even across restarts with the same pid.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._checkpoints = checkpoints or (lambda c: build_checkpoints(c, self.owner))
        self._stop = threading.Event()
        self._running: list[_Running] = []

    def build(self, target: TargetConfig) -> GroupConsumer:
        config = self.config
        defaults = config.consumer
        codec = Codec.packaged()
        built = build_target(target, TargetContext(config, codec))
        policy = RetryPolicy(
            max_attempts=target.max_attempts
            or defaults.get("maxAttempts", RetryPolicy.max_attempts),
            max_record_age_seconds=target.max_record_age_seconds
            or defaults.get("maxRecordAgeSeconds", RetryPolicy.max_record_age_seconds),
        )
        return GroupConsumer(
            target.group,
            target.namespace,
            built,
            self._reader(config),
            self._checkpoints(config),
            dead_letter_store(target.dead_letter_uri or config.dead_letter_uri, config.data_dir),
            codec,
            kinds=built.kinds,
            batch_size=target.batch_size or defaults.get("batchSize", 500),
            policy=policy,
            poll_seconds=defaults.get("pollIntervalMs", 200) / 1000,
            metrics=self.metrics,
            stop=self._stop,
        )

    def start(self) -> None:
        for target in self.targets:
            consumer = self.build(target)
            thread = threading.Thread(
                target=self._run, args=(consumer,), name=f"consumer {target.group}", daemon=True
            )
            self._running.append(_Running(consumer, thread))
            thread.start()
        log.info("consumers started: %s", ", ".join(t.group for t in self.targets) or "none")

    def _run(self, consumer: GroupConsumer) -> None:
        try:
            consumer.run()
        except P13nError as exc:
            log.error("consumer %s stopped: %s", consumer.group, exc.message)
        except Exception:
            log.exception("consumer %s crashed", consumer.group)
        finally:
            consumer.reader.close()
            consumer.checkpoints.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish each group's batch in hand, checkpoint it, and return."""
        self._stop.set()
        for running in self._running:
            running.thread.join(timeout)
            if running.thread.is_alive():
                log.warning("consumer %s did not stop within %ss", running.consumer.group, timeout)

    def wait(self) -> None:
        for running in self._running:
            running.thread.join()
