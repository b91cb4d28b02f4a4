"""The embedded SQLite log: routing, ordering, durability across processes, retention."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sqlite3
import time
from collections import defaultdict

import pytest

from schemas.errors import ConfigError
from streams.base import Entry, Position, Shard
from streams.checkpoints import SqliteCheckpointStore
from streams.embedded import EmbeddedReader, EmbeddedWriter
from streams.hashing import MAX_HASH_KEY, ShardMap, equal_ranges, hash_key


def read_all(reader: EmbeddedReader, after: dict[str, Position] | None = None):
    out = []
    for shard in reader.list_shards():
        cursor = reader.open(shard.shard_id, (after or {}).get(shard.shard_id))
        while batch := cursor.read(300).records:
            out.extend(batch)
    return out


def test_shards_cover_the_hash_key_space_like_kinesis(tmp_path):
    writer = EmbeddedWriter(str(tmp_path / "s.db"), shards=4)
    shards = EmbeddedReader(str(tmp_path / "s.db")).list_shards()
    assert [s.shard_id for s in shards] == [f"shardId-00000000000{i}" for i in range(4)]
    assert shards[0].starting_hash_key == 0 and shards[-1].ending_hash_key == MAX_HASH_KEY
    for left, right in itertools.pairwise(shards):
        assert right.starting_hash_key == left.ending_hash_key + 1
    writer.close()


def test_records_route_by_md5_of_partition_key_and_keep_order(tmp_path):
    path = str(tmp_path / "s.db")
    writer = EmbeddedWriter(path, shards=4)
    entries = [Entry(f"key-{i % 37}", f"{i % 37}:{i}".encode()) for i in range(2000)]
    for start in range(0, len(entries), 250):
        written, stats = writer.put_batch(entries[start : start + 250])
        assert stats.stream_records == len(written) == 250
    reader = EmbeddedReader(path)
    shard_map = ShardMap(reader.list_shards())
    records = read_all(reader)
    assert len(records) == 2000
    per_key = defaultdict(list)
    for record in records:
        assert shard_map.shard_for(hash_key(record.partition_key)).shard_id == record.shard_id
        per_key[record.partition_key].append(int(record.data.split(b":")[1]))
    for key, sequence in per_key.items():
        assert sequence == sorted(sequence), key
    writer.close()


def test_reading_resumes_strictly_after_a_position(tmp_path):
    path = str(tmp_path / "s.db")
    writer = EmbeddedWriter(path, shards=1)
    written, _ = writer.put_batch([Entry("k", str(i).encode()) for i in range(10)])
    reader = EmbeddedReader(path)
    cursor = reader.open("shardId-000000000000", Position(written[4].sequence_number))
    assert [r.data for r in cursor.read().records] == [str(i).encode() for i in range(5, 10)]
    at_end = reader.open("shardId-000000000000", at_end=True)
    assert at_end.read().records == []
    writer.put_batch([Entry("k", b"new")])
    assert [r.data for r in at_end.read().records] == [b"new"]


def test_reopening_with_another_shard_count_is_refused(tmp_path):
    EmbeddedWriter(str(tmp_path / "s.db"), shards=2).close()
    with pytest.raises(ConfigError, match="has 2 shards"):
        EmbeddedWriter(str(tmp_path / "s.db"), shards=4)


def test_retention_trims_old_records_and_never_reuses_sequence_numbers(tmp_path):
    path = str(tmp_path / "s.db")
    writer = EmbeddedWriter(path, shards=1, retention_hours=1)
    old, _ = writer.put_batch([Entry("k", b"old")] * 3)
    future_ms = int(time.time() * 1000) + 2 * 3600 * 1000
    assert writer.trim(future_ms) == 3
    new, _ = writer.put_batch([Entry("k", b"new")])
    assert int(new[0].sequence_number) == int(old[-1].sequence_number) + 1
    assert [r.data for r in read_all(EmbeddedReader(path))] == [b"new"]
    assert writer.trim() == 0  # nothing young is removed


def test_equal_ranges_are_contiguous():
    ranges = equal_ranges(7)
    assert ranges[0][0] == 0 and ranges[-1][1] == MAX_HASH_KEY
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))


def _write_process(path: str, writer_id: int, count: int) -> None:
    writer = EmbeddedWriter(path, shards=4)
    for start in range(0, count, 50):
        writer.put_batch(
            [
                Entry(f"w{writer_id}-k{i % 5}", f"{writer_id}:{i}".encode())
                for i in range(start, start + 50)
            ]
        )
    writer.close()


def _read_process(path: str, expected: int, out: multiprocessing.Queue) -> None:
    deadline = time.monotonic() + 60
    positions: dict[str, Position] = {}
    seen = 0
    while seen < expected and time.monotonic() < deadline:
        reader = EmbeddedReader(path)
        for record in read_all(reader, positions):
            positions[record.shard_id] = record.position
            seen += 1
        reader.close()
    out.put(seen)


def test_writers_and_readers_in_separate_processes(tmp_path):
    path = str(tmp_path / "s.db")
    EmbeddedWriter(path, shards=4).close()
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()
    writers = [ctx.Process(target=_write_process, args=(path, w, 1000)) for w in range(2)]
    readers = [ctx.Process(target=_read_process, args=(path, 2000, results)) for _ in range(2)]
    for process in readers + writers:
        process.start()
    for process in writers + readers:
        process.join(90)
        assert process.exitcode == 0
    assert [results.get(timeout=5), results.get(timeout=5)] == [2000, 2000]
    # Sequence numbers are unique and dense per shard even with two writing processes.
    records = read_all(EmbeddedReader(path))
    per_shard = defaultdict(list)
    for record in records:
        per_shard[record.shard_id].append(int(record.sequence_number))
    for sequence in per_shard.values():
        assert sequence == list(range(1, len(sequence) + 1))


def test_checkpoints_survive_reopening(tmp_path):
    path = str(tmp_path / "c.db")
    store = SqliteCheckpointStore(path)
    assert store.load("demo/archive", "shardId-000000000000") is None
    store.save("demo/archive", "shardId-000000000000", Position("41", 2))
    store.save("demo/archive", "shardId-000000000000", Position("42", 0))
    store.close()
    again = SqliteCheckpointStore(path)
    assert again.load("demo/archive", "shardId-000000000000") == Position("42", 0)
    assert again.load("demo/other", "shardId-000000000000") is None
    assert os.path.exists(path)


def test_a_writer_whose_numbers_were_taken_reads_them_again(tmp_path):
    """Two writers taking turns on one log: each one's idea of the last numbers goes stale
    every turn; the refused statement is retried with fresh numbers, nothing lost or reused."""
    path = str(tmp_path / "s.db")
    first, second = EmbeddedWriter(path, shards=2), EmbeddedWriter(path, shards=2)
    sent = []
    for turn in range(6):
        writer = (first, second)[turn % 2]
        batch = [Entry(f"k{i}", f"{turn}:{i}".encode()) for i in range(7)]
        written, _ = writer.put_batch(batch)
        assert len(written) == len(batch)
        sent += [e.data for e in batch]
    records = read_all(EmbeddedReader(path))
    assert sorted(r.data for r in records) == sorted(sent)
    per_shard = defaultdict(list)
    for record in records:
        per_shard[record.shard_id].append(int(record.sequence_number))
    for sequence in per_shard.values():
        assert sequence == list(range(1, len(sequence) + 1))


def test_a_batch_larger_than_one_statement_is_written_whole_and_in_order(tmp_path):
    path = str(tmp_path / "s.db")
    writer = EmbeddedWriter(path, shards=1)
    batch = [Entry("k", str(i).encode()) for i in range(2500)]
    written, _ = writer.put_batch(batch)
    assert [int(w.sequence_number) for w in written] == list(range(1, 2501))
    assert [r.data for r in read_all(EmbeddedReader(path))] == [e.data for e in batch]
    more, _ = writer.put_batch([Entry("k", b"next")])
    assert more[0].sequence_number == "2501"


def test_a_writer_idle_past_retention_never_reuses_a_trimmed_number(tmp_path):
    """The numbers another writer used may be trimmed away before this one writes again: its
    stale numbers are refused all the same (readers have passed them), and it renumbers."""
    path = str(tmp_path / "s.db")
    idle, busy = EmbeddedWriter(path, shards=1), EmbeddedWriter(path, shards=1)
    idle.put_batch([Entry("k", b"a")])
    busy.put_batch([Entry("k", b"b"), Entry("k", b"c")])
    assert busy.trim(int(time.time() * 1000) + 48 * 3600 * 1000) == 3
    written, _ = idle.put_batch([Entry("k", b"d")])
    assert written[0].sequence_number == "4"
    assert [(r.sequence_number, r.data) for r in read_all(EmbeddedReader(path))] == [("4", b"d")]


def test_a_batch_is_one_chunk_per_shard_it_touches(tmp_path):
    path = str(tmp_path / "s.db")
    writer = EmbeddedWriter(path, shards=4)
    batch = [Entry(f"key-{i}", f"{i}".encode()) for i in range(40)]
    written, _ = writer.put_batch(batch)
    touched = {w.shard_id for w in written}
    conn = sqlite3.connect(path)
    (chunks,) = conn.execute("SELECT count(*) FROM chunks").fetchone()
    conn.close()
    assert chunks == len(touched) > 1
    by_id = {(r.shard_id, r.sequence_number): r.data for r in read_all(EmbeddedReader(path))}
    assert [by_id[(w.shard_id, w.sequence_number)] for w in written] == [e.data for e in batch]


# The format before chunks: one row per record (what logs written by earlier versions hold).
_ROW_PER_RECORD = """
CREATE TABLE shards (idx INTEGER PRIMARY KEY, shard_id TEXT NOT NULL UNIQUE,
    start_hash TEXT NOT NULL, end_hash TEXT NOT NULL);
CREATE TABLE shard_seq (idx INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE records (idx INTEGER NOT NULL, seq INTEGER NOT NULL, partition_key TEXT NOT NULL,
    data BLOB NOT NULL, arrival_ms INTEGER NOT NULL, PRIMARY KEY (idx, seq)) WITHOUT ROWID;
CREATE TRIGGER records_fresh_seq BEFORE INSERT ON records
WHEN NEW.seq <= (SELECT last_seq FROM shard_seq WHERE idx = NEW.idx) BEGIN
    SELECT RAISE(ABORT, 'sequence number already used');
END;
CREATE TRIGGER records_last_seq AFTER INSERT ON records BEGIN
    UPDATE shard_seq SET last_seq = NEW.seq WHERE idx = NEW.idx AND last_seq < NEW.seq;
END;
"""


def test_a_log_written_a_row_per_record_is_converted_with_its_numbers(tmp_path):
    """Nothing in a log from before chunks is lost: its records read back in order with the
    same numbers, and new ones continue after them (also after trimmed ones)."""
    path = str(tmp_path / "s.db")
    ranges = equal_ranges(2)
    shards = ShardMap(
        [Shard(f"shardId-{i:012d}", start, end) for i, (start, end) in enumerate(ranges)]
    )
    first, second = (
        next(
            f"k{n}"
            for n in itertools.count()
            if shards.shard_for(hash_key(f"k{n}")).shard_id.endswith(str(i))
        )
        for i in (0, 1)
    )
    conn = sqlite3.connect(path)
    conn.executescript(_ROW_PER_RECORD)
    for index, (start, end) in enumerate(ranges):
        conn.execute(
            "INSERT INTO shards VALUES (?, ?, ?, ?)",
            (index, f"shardId-{index:012d}", str(start), str(end)),
        )
        conn.execute("INSERT INTO shard_seq VALUES (?, 0)", (index,))
    now_ms = int(time.time() * 1000)
    for seq in range(1, 2501):
        conn.execute(
            "INSERT INTO records VALUES (0, ?, ?, ?, ?)", (seq, first, b"r%d" % seq, now_ms)
        )
    conn.execute("INSERT INTO records VALUES (1, 1, ?, x'00ff', ?)", (second, now_ms))
    conn.execute("UPDATE shard_seq SET last_seq = 7 WHERE idx = 1")  # 2-7 were trimmed
    conn.commit()
    conn.close()

    writer = EmbeddedWriter(path, shards=2)
    records = read_all(EmbeddedReader(path))
    assert [(r.shard_id, r.sequence_number, r.partition_key, r.data) for r in records] == [
        ("shardId-000000000000", str(seq), first, b"r%d" % seq) for seq in range(1, 2501)
    ] + [("shardId-000000000001", "1", second, b"\x00\xff")]
    assert {r.arrival_ms for r in records} == {now_ms}
    written, _ = writer.put_batch([Entry(first, b"next"), Entry(second, b"after trim")])
    assert [(w.shard_id[-1], w.sequence_number) for w in written] == [("0", "2501"), ("1", "8")]
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "records" not in tables and "records_fresh_seq" not in tables
