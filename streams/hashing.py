"""Partition key → hash key → shard, the way Kinesis routes records."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

from streams.base import Shard

MAX_HASH_KEY = 2**128 - 1


def hash_key(partition_key: str) -> int:
    """The 128-bit hash key Kinesis derives from a partition key (MD5, big-endian)."""
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")


def equal_ranges(count: int) -> list[tuple[int, int]]:
    """``count`` contiguous hash-key ranges of (nearly) equal width covering the key space,
    as Kinesis creates them for a new stream."""
    if count < 1:
        raise ValueError("a stream needs at least one shard")
    width = (MAX_HASH_KEY + 1) // count
    ranges = [(i * width, (i + 1) * width - 1) for i in range(count)]
    ranges[-1] = (ranges[-1][0], MAX_HASH_KEY)
    return ranges


class ShardMap:
    """The open shards of a stream, searchable by hash key."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        open_shards = sorted((s for s in shards if not s.closed), key=lambda s: s.starting_hash_key)
        if not open_shards:
            raise ValueError("the stream has no open shard")
        self.shards: tuple[Shard, ...] = tuple(open_shards)
        self._starts = [s.starting_hash_key for s in open_shards]

    def shard_for(self, hash_key_value: int) -> Shard:
        index = bisect.bisect_right(self._starts, hash_key_value) - 1
        shard = self.shards[max(index, 0)]
        if not shard.starting_hash_key <= hash_key_value <= shard.ending_hash_key:
            raise ValueError(f"hash key {hash_key_value} is in no open shard")
        return shard

    def __len__(self) -> int:
        return len(self.shards)
