"""Which shards one consumer group's runner may read, when several processes share a stream.

With a ``streams.base.LeaseStore`` (DynamoDB checkpoints), a ``GroupConsumer`` reads only the
shards it holds leases on. ``ShardLeases`` keeps that set: it takes at most one free (or
expired) shard per poll round, so processes started together share the shards rather than the
first taking them all; it renews every lease each third of ``lease_seconds`` — from a thread of
its own while the runner runs, so a long retry inside one batch does not let the leases lapse;
and it reports the leases it lost so the runner drops their cursors. A shard taken by another
process is asked for again only after that same interval. Shards are not rebalanced: a process
started after the others took every shard waits until one is released or expires.

A lease counts only while this process knows it is valid: from the moment before the store
call that took or renewed it, for ``lease_seconds`` less a margin for clock drift between
hosts. When renewals fail (the store unreachable), the shard stops being read once that time
is up, though it is still held: another process may own it by then, and reading on would mean
two readers of one shard. A later successful renewal resumes reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from schemas.errors import P13nError
from streams.base import LeaseStore, Shard

log = logging.getLogger("p13n.consumer")

# Share of a lease's duration not counted on: room for clocks of two hosts to disagree.
CLOCK_MARGIN = 0.1


class ShardLeases:
    def __init__(
        self, store: LeaseStore, group: str, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.group = group
        self.interval = store.lease_seconds / 3
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._valid_until: dict[str, float] = {}
        self._renewed_at = monotonic()
        self._halt = threading.Event()
        self._renewer: threading.Thread | None = None
        self._told_waiting = False

    def held(self, shards: list[Shard]) -> list[Shard]:
        """Of ``shards`` (in order), those this process holds; renews when due and tries to
        take one more."""
        now = self._monotonic()
        if self._renewer is None and now - self._renewed_at >= self.interval:
            self.renew()  # driven by polls alone (no renewing thread)
        with self._lock:
            held = set(self._held)
        for shard in shards:
            shard_id = shard.shard_id
            if shard_id in held or self._retry_at.get(shard_id, 0.0) > now:
                continue
            asked_at = self._monotonic()
            if self.store.acquire(self.group, shard_id):
                with self._lock:
                    self._held.add(shard_id)
                    self._valid_until[shard_id] = asked_at + self._validity
                held.add(shard_id)
                log.info("consumer %s: took the lease of %s", self.group, shard_id)
                break
            self._retry_at[shard_id] = now + self.interval
        with self._lock:
            valid = {s for s in held if self._valid_until.get(s, 0.0) > now}
        # A second runner of the group: say once that it waits, not silently read nothing.
        if shards and not held and not self._told_waiting:
            log.info("consumer %s: every shard is leased by another process; waiting", self.group)
            self._told_waiting = True
        elif held:
            self._told_waiting = False
        return [s for s in shards if s.shard_id in valid]

    @property
    def _validity(self) -> float:
        return self.store.lease_seconds * (1 - CLOCK_MARGIN)

    def lost(self) -> set[str]:
        """Shards whose lease a renewal found taken since the last call."""
        with self._lock:
            lost, self._lost = self._lost, set()
        return lost

    def renew(self) -> None:
        """Renew every held lease; a lease found taken moves to ``lost``."""
        self._renewed_at = self._monotonic()
        with self._lock:
            held = sorted(self._held)
        for shard_id in held:
            asked_at = self._monotonic()
            try:
                kept = self.store.renew(self.group, shard_id)
            except P13nError as exc:
                # The store is unreachable: the shard is read on until its lease runs out here,
                # and a checkpoint save tells if it was lost.
                log.warning("consumer %s: lease renewal failed: %s", self.group, exc.message)
                return
            if kept:
                with self._lock:
                    self._valid_until[shard_id] = asked_at + self._validity
            else:
                log.warning("consumer %s: lost the lease of %s", self.group, shard_id)
                self.drop(shard_id)
                with self._lock:
                    self._lost.add(shard_id)

    def drop(self, shard_id: str) -> None:
        """Forget a lease another process owns now (nothing to release)."""
        with self._lock:
            self._held.discard(shard_id)
            self._valid_until.pop(shard_id, None)
        self._retry_at[shard_id] = self._monotonic() + self.interval

    def release(self, shard_id: str) -> None:
        with self._lock:
            if shard_id not in self._held:
                return
            self._held.discard(shard_id)
            self._valid_until.pop(shard_id, None)
        self.store.release(self.group, shard_id)

    def start(self) -> None:
        """Renew from a thread of our own until ``stop``."""
        self._halt.clear()
        self._renewer = threading.Thread(
            target=self._keep, name=f"leases {self.group}", daemon=True
        )
        self._renewer.start()

    def _keep(self) -> None:
        while not self._halt.wait(self.interval):
            self.renew()

    def stop(self) -> None:
        """Stop renewing and release every lease held, so others take over at once."""
        self._halt.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        with self._lock:
            held = sorted(self._held)
        for shard_id in held:
            try:
                self.release(shard_id)
            except P13nError as exc:  # the lease expires by itself then
                log.warning("consumer %s: lease release failed: %s", self.group, exc.message)
