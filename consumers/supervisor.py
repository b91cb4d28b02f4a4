"""Runs one consumer group per event target, each on a thread of its own, until stopped.

Used by ``p13n consume`` and, in embedded mode, by ``p13n serve``. Each group gets its own
stream reader and checkpoint connection (SQLite connections and shard cursors are not shared
between threads), so a slow or failing target holds up nobody but itself.

What a group's thread guarantees, in order:

1. **One runner per group and data folder.** With SQLite checkpoints a group runs only while
   this process holds its ``GroupLock`` (``<dataDir>/locks/``). ``start(wait=False)`` refuses
   at once (``ConsumerGroupBusy``) when another process holds any; ``start(wait=True)`` leaves
   such a group in ``standby`` and takes over when the lock frees. DynamoDB checkpoints lease
   shards instead (``consumers.leases``): a second process reads the shards nobody holds.
2. **Operator errors pause, never dead-letter.** An ``OperatorError`` — no or refused AWS
   credentials (checked before the group starts too), a ``[PLACEHOLDER]`` left in the target's
   settings — puts the group in ``paused``: nothing is settled or checkpointed, the error is
   logged, and the group is rebuilt (a new client, so new credentials are picked up) after
   ``PAUSE_FIRST_SECONDS``, doubling up to ``PAUSE_MAX_SECONDS``, until it runs.
3. **Outages and crashes restart, never stop.** A ``RetryableError`` that reaches the group
   (the stream, the checkpoint store or the target's own store unreachable when it is built,
   opened or read) or an unexpected exception (a bug, logged with its traceback) puts it in
   ``restarting``: it is rebuilt after the same delays and goes on from its checkpoint, so
   what was accepted meanwhile is delivered once it can be. Only a ``PermanentError`` (a
   setting that can never work) leaves a group ``stopped`` until a reload or restart.
4. **Reload rebuilds.** ``reload(config)`` stops the groups gone from the config, rebuilds those
   whose target, namespace or consumer settings changed (each finishes its batch in hand and
   checkpoints first; the new one resumes from that checkpoint), and starts the new ones. A
   change of stream, data folder or checkpoint store needs a restart: it is logged and the
   groups keep running as they are.

``health()`` reports each group's state (``starting``, ``standby``, ``running``, ``paused``,
``restarting``, ``stopped``) with its reason, for ``/readyz`` and the ``p13n_consumer_state``
metric.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from consumers.base import CallsAws, Target
from consumers.deadletters import dead_letter_store
from consumers.runner import ConsumerMetrics, GroupConsumer, RetryPolicy
from consumers.targets import TargetContext, build_target
from schemas.codec import Codec
from schemas.config import Config, Namespace, TargetConfig
from schemas.errors import ConfigError, OperatorError, P13nError, RetryableError, Unavailable
from schemas.sources import ConfigHolder
from streams.base import CheckpointStore, StreamReader
from streams.checkpoints import GroupLock
from streams.factory import build_checkpoints, build_reader

log = logging.getLogger("p13n.consumers")

PAUSE_FIRST_SECONDS = 1.0
PAUSE_MAX_SECONDS = 15.0
LOCK_RETRY_SECONDS = 1.0
# The sample project's configs name what to fill in as [REGION], [ACCOUNT], [TRACKING_ID]...
# (upper case only, so an IPv6 host such as http://[::1]:8080 is not one).
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_ -]*\]")


def lock_directory(config: Config) -> str:
    return os.path.join(config.data_dir, "locks")


def find_placeholders(value: Any, where: str = "") -> list[str]:
    """``[PLACEHOLDER]`` strings anywhere in ``value`` (nested mappings and lists), as
    ``path: string``."""
    if isinstance(value, str):
        return [f"{where}: {value}"] if _PLACEHOLDER.search(value) else []
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, inner in value.items():
            found += find_placeholders(inner, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            found += find_placeholders(inner, f"{where}[{index}]")
    return found


def placeholders(target: TargetConfig) -> list[str]:
    """``[PLACEHOLDER]`` strings left in a target's settings, as ``key: value``."""
    found = find_placeholders(dict(target.options))
    for key in ("endpoint_url", "region", "dead_letter_uri"):
        found += find_placeholders(getattr(target, key), key)
    return found


def missing_credentials(
    built: Target, target: TargetConfig, config: Config
) -> OperatorError | None:
    """An ``OperatorError`` when the built target (``CallsAws``) or its dead-letter store calls
    AWS and boto3 finds no credentials."""
    dead_letters = target.dead_letter_uri or config.dead_letter_uri or ""
    calls_aws = isinstance(built, CallsAws) and built.calls_aws
    if not calls_aws and not dead_letters.startswith("s3://"):
        return None
    import boto3

    if boto3.session.Session().get_credentials() is not None:
        return None
    return OperatorError(
        f"{target.group}: no AWS credentials (environment, shared credentials file, SSO, "
        "instance or task role)",
        code="NoCredentialsError",
    )


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
class _Group:
    target: TargetConfig
    fingerprint: str
    lock: GroupLock | None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    state: str = "starting"
    reason: str | None = None
    since: float = field(default_factory=time.time)

    def set(self, state: str, reason: str | None = None) -> bool:
        """Move to ``state``; True when that is a change (of state or of reason), which is
        when it is worth a log line."""
        if (state, reason) == (self.state, self.reason):
            return False
        self.state, self.reason, self.since = state, reason, time.time()
        return True


def _fingerprint(config: Config, target: TargetConfig) -> str:
    """What a group is built from: a change of any of it rebuilds the group on reload."""
    namespace = dict(config.document.get("namespaces", {}).get(target.namespace) or {})
    namespace.pop("eventTargets", None)  # the target's own entry is `target`; others are theirs
    return json.dumps(
        [
            repr(target),
            _plain(namespace),
            repr(config.consumer),
            config.dead_letter_uri,
            _plain(config.experiment_store),
        ],
        sort_keys=True,
        default=str,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
        self._names = list(targets) if targets else None
        self.targets = select_targets(config, self._names)
        self.metrics = metrics
        self._reader = reader
        # Names this process in shard leases; unique even across restarts with the same pid.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._checkpoints = checkpoints or (lambda c: build_checkpoints(c, self.owner))
        # With the default checkpoint factory and SQLite checkpoints, the data folder's group
        # locks decide who runs a group; leased (DynamoDB) or injected checkpoints do not lock.
        self._locking = checkpoints is None and config.checkpoints.get("type", "sqlite") == "sqlite"
        # Replaced whole, never changed in place, so health() reads it without the mutex (it
        # runs on the event loop; a reload holds the mutex while groups finish their batch).
        self._groups: dict[str, _Group] = {}
        self._mutex = threading.Lock()

    def build(self, target: TargetConfig, stop: threading.Event | None = None) -> GroupConsumer:
        config = self.config
        found = placeholders(target)
        if found:
            raise OperatorError(
                f"{target.group}: placeholder left in the config ({'; '.join(found)})",
                code="UnresolvedPlaceholder",
            )
        defaults = config.consumer
        codec = Codec.packaged()
        built = build_target(target, TargetContext(config, codec))
        policy = RetryPolicy.for_target(target, defaults)
        # A group that fails to build is rebuilt later: what was opened is closed, not leaked.
        with contextlib.ExitStack() as opened:
            reader = self._reader(config)
            opened.callback(reader.close)
            checkpoints = self._checkpoints(config)
            opened.callback(checkpoints.close)
            consumer = GroupConsumer(
                target.group,
                target.namespace,
                built,
                reader,
                checkpoints,
                dead_letter_store(
                    target.dead_letter_uri or config.dead_letter_uri, config.data_dir
                ),
                codec,
                kinds=built.kinds,
                batch_size=target.batch_size or defaults.batch_size,
                policy=policy,
                poll_seconds=defaults.poll_interval_ms / 1000,
                metrics=self.metrics,
                stop=stop,
            )
            opened.pop_all()
        return consumer

    # -- starting and stopping ----------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        """Start every group. A group another process runs on this data folder waits for it
        (``wait``, as ``serve`` does) or, with ``wait=False``, nothing starts and
        ``Unavailable`` (code ``ConsumerGroupBusy``) names who holds which group."""
        groups = [self._group(self.config, target) for target in self.targets]
        if not wait:
            busy = [g for g in groups if g.lock is not None and not g.lock.acquire(self._holder())]
            if busy:
                for g in groups:
                    if g.lock is not None:
                        g.lock.release()
                raise Unavailable(
                    f"consumer group {busy[0].target.group} already runs on "
                    f"{os.path.abspath(self.config.data_dir)} "
                    f"({busy[0].lock.holder() if busy[0].lock else 'another process'})"
                    + (f", and {len(busy) - 1} more group(s)" if len(busy) > 1 else "")
                    + "; stop it first, or run with --wait to take over when it stops",
                    code="ConsumerGroupBusy",
                )
        with self._mutex:
            for g in groups:
                self._launch(g)
        log.info("consumers started: %s", ", ".join(t.group for t in self.targets) or "none")

    def _group(self, config: Config, target: TargetConfig) -> _Group:
        lock = GroupLock(lock_directory(config), target.group) if self._locking else None
        return _Group(target, _fingerprint(config, target), lock)

    def _launch(self, group: _Group) -> None:
        group.thread = threading.Thread(
            target=self._run, args=(group,), name=f"consumer {group.target.group}", daemon=True
        )
        self._groups = {**self._groups, group.target.group: group}
        group.thread.start()

    def _holder(self) -> str:
        command = " ".join(["p13n", *sys.argv[1:]])[:200]
        return f"pid {os.getpid()} on {socket.gethostname()}: {command}"

    def stop(self, timeout: float = 30.0) -> None:
        """Finish each group's batch in hand, checkpoint it, and return."""
        with self._mutex:
            groups = list(self._groups.values())
        self._halt(groups, timeout)

    def _halt(self, groups: list[_Group], timeout: float) -> None:
        for group in groups:
            group.stop.set()
        for group in groups:
            if group.thread is not None:
                group.thread.join(timeout)
                if group.thread.is_alive():
                    log.warning("consumer %s did not stop within %ss", group.target.group, timeout)

    def wait(self) -> None:
        for group in list(self._groups.values()):
            if group.thread is not None:
                group.thread.join()

    def health(self) -> dict[str, dict[str, Any]]:
        """Each group's state, with the reason when it is not running."""
        groups = list(self._groups.values())
        report: dict[str, dict[str, Any]] = {}
        for g in groups:
            entry: dict[str, Any] = {"state": g.state, "since": round(g.since, 3)}
            if g.reason:
                entry["reason"] = g.reason
            report[g.target.group] = entry
        return report

    # -- reload ---------------------------------------------------------------------------------

    def follow(self, holder: ConfigHolder) -> None:
        """Apply every valid config change of ``holder`` (on its watcher thread)."""

        def changed(old: Config, new: Config) -> None:
            self.reload(new)

        holder.subscribe(changed)

    def reload(self, new: Config) -> dict[str, list[str]]:
        """Bring the running groups in line with ``new``; returns what was started, rebuilt
        and stopped (or ``restart`` listing the settings that only a restart applies)."""
        old = self.config
        needs = [
            name
            for name, before, after in (
                ("stream", old.stream, new.stream),
                ("dataDir", old.data_dir, new.data_dir),
                ("checkpoints", _plain(old.checkpoints), _plain(new.checkpoints)),
            )
            if before != after
        ]
        if needs:
            log.warning(
                "consumers: %s changed in the config; restart p13n to apply it (the consumer "
                "groups keep running on the settings they started with)",
                ", ".join(needs),
            )
            return {"restart": needs}
        try:
            targets = select_targets(new, self._names)
        except ConfigError as exc:
            log.error("consumers: reloaded config not applied to consumers: %s", exc.message)
            return {"restart": []}
        with self._mutex:
            self.config = new
            self.targets = targets
            wanted = {t.group: self._group(new, t) for t in targets}
            gone = [g for key, g in self._groups.items() if key not in wanted]
            changed = [
                g
                for key, g in self._groups.items()
                if key in wanted and wanted[key].fingerprint != g.fingerprint
            ]
            self._halt([*gone, *changed], 30.0)
            self._groups = {k: g for k, g in self._groups.items() if k in wanted}
            rebuilt = {g.target.group for g in changed}
            started = [key for key in wanted if key not in self._groups]
            for key in [*started, *sorted(rebuilt)]:
                self._launch(wanted[key])
        answer = {
            "started": sorted(started),
            "rebuilt": sorted(rebuilt),
            "stopped": sorted(g.target.group for g in gone),
        }
        log.info(
            "consumers reloaded: started %s; rebuilt %s; stopped %s",
            ", ".join(answer["started"]) or "none",
            ", ".join(answer["rebuilt"]) or "none",
            ", ".join(answer["stopped"]) or "none",
            extra={"consumers": answer},
        )
        return answer

    # -- one group's thread ---------------------------------------------------------------------

    def _run(self, group: _Group) -> None:
        try:
            if self._take_lock(group):
                self._work(group)
        finally:
            if group.lock is not None:
                group.lock.release()
            if group.state not in ("paused", "stopped"):
                group.set("stopped", group.reason)

    def _take_lock(self, group: _Group) -> bool:
        if group.lock is None:
            return True
        told = False
        while not group.lock.acquire(self._holder()):
            if not told:
                holder = group.lock.holder() or "another process"
                group.set("standby", f"runs in another process ({holder})")
                log.warning(
                    "consumer %s already runs on this data folder (%s); waiting for it to stop",
                    group.target.group,
                    holder,
                )
                told = True
            if group.stop.wait(LOCK_RETRY_SECONDS):
                return False
        if told:
            log.info("consumer %s: the other runner stopped; taking over", group.target.group)
        return True

    def _work(self, group: _Group) -> None:
        """Build and run the group until it is stopped. An operator error pauses it, a
        retryable error or a crash restarts it (after 1 s, doubling up to 15 s; back to 1 s
        once it had run that long), a permanent error stops it."""
        delay = PAUSE_FIRST_SECONDS
        name = group.target.group
        while not group.stop.is_set():
            consumer: GroupConsumer | None = None
            began = time.monotonic()
            try:
                # A placeholder first (build refuses it): credentials would not fix that.
                consumer = self.build(group.target, group.stop)
                problem = missing_credentials(consumer.target, group.target, self.config)
                if problem is not None:
                    raise problem
                if group.state in ("paused", "restarting"):
                    log.info("consumer %s: resuming after %s", name, group.reason)
                group.set("running")
                consumer.run()
                return
            except OperatorError as exc:
                if group.set("paused", exc.message):
                    log.error(
                        "consumer %s paused: %s; nothing is dead-lettered, the group retries "
                        "until this is fixed",
                        name,
                        exc.message,
                        extra={"code": exc.code},
                    )
            except RetryableError as exc:
                # The stream, the checkpoints or the target's own store did not answer (a
                # locked or missing file, a network error): what is unsettled stays in the
                # stream, and the rebuilt group goes on from the checkpoint.
                if group.set("restarting", exc.message):
                    log.warning("consumer %s restarting: %s", name, exc.message)
            except P13nError as exc:
                log.error("consumer %s stopped: %s", name, exc.message)
                group.set("stopped", exc.message)
                return
            except Exception as exc:
                # A bug: said loudly, then handled like an outage rather than leaving the
                # group's records undelivered until someone restarts the process.
                if group.set("restarting", f"crashed: {type(exc).__name__}: {exc}"):
                    log.exception("consumer %s crashed; restarting it", name)
            finally:
                if consumer is not None:
                    consumer.reader.close()
                    consumer.checkpoints.close()
            if time.monotonic() - began >= PAUSE_MAX_SECONDS:
                delay = PAUSE_FIRST_SECONDS  # it ran for a while: a new spell of trouble
            if group.stop.wait(delay):
                return
            delay = min(delay * 2, PAUSE_MAX_SECONDS)
