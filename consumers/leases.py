"""Which shards one consumer group's runner may read, when several processes share a stream.

With a ``streams.base.LeaseStore`` (DynamoDB checkpoints), a ``GroupConsumer`` reads only the
shards it holds leases on. ``ShardLeases`` keeps that set: it takes at most one free (or
expired) shard per poll round, so processes started together share the shards rather than the
first taking them all; it renews every lease each third of ``lease_seconds`` — from a thread of
its own while the runner runs, so a long retry inside one batch does not let the leases lapse;
and it reports the leases it lost so the runner drops their cursors. A shard taken by another
process is asked for again only after that same interval. Shards are not rebalanced: a process
started after the others took every shard waits until one is released or expires.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from schemas.errors import P13nError
from streams.base import LeaseStore, Shard

log = logging.getLogger("p13n.consumer")


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
        self._renewed_at = monotonic()
        self._halt = threading.Event()
        self._renewer: threading.Thread | None = None

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
            if self.store.acquire(self.group, shard_id):
                with self._lock:
                    self._held.add(shard_id)
                held.add(shard_id)
                log.info("consumer %s: took the lease of %s", self.group, shard_id)
                break
            self._retry_at[shard_id] = now + self.interval
        return [s for s in shards if s.shard_id in held]

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
            try:
                kept = self.store.renew(self.group, shard_id)
            except P13nError as exc:  # the store is unreachable: save will tell if we lost it
                log.warning("consumer %s: lease renewal failed: %s", self.group, exc.message)
                return
            if not kept:
                log.warning("consumer %s: lost the lease of %s", self.group, shard_id)
                self.drop(shard_id)
                with self._lock:
                    self._lost.add(shard_id)

    def drop(self, shard_id: str) -> None:
        """Forget a lease another process owns now (nothing to release)."""
        with self._lock:
            self._held.discard(shard_id)
        self._retry_at[shard_id] = self._monotonic() + self.interval

    def release(self, shard_id: str) -> None:
        with self._lock:
            if shard_id not in self._held:
                return
            self._held.discard(shard_id)
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
