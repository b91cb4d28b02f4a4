"""The embedded log's writer process: what the producer puts through it is in the log, in order,
under the numbers it was answered with; batches waiting in the pipe share a commit; a writer
process that dies fails what it had not answered, and the next batch starts another; close
drains it."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.config import ProducerConfig
from schemas.errors import Unavailable
from streams.base import Entry, Written
from streams.embedded import EmbeddedReader
from streams.embedded_process import EmbeddedProcessWriter, Frames, _groups, frame, serve
from streams.producer import Producer

ENCODE = msgspec.msgpack.Encoder().encode


def read_all(path: str) -> list[tuple[str, str, str, bytes]]:
    """(shard, number, key, data) of every record, shard by shard, in order."""
    reader = EmbeddedReader(path)
    out = []
    try:
        for shard in reader.list_shards():
            cursor = reader.open(shard.shard_id)
            while records := cursor.read(500).records:
                out += [(r.shard_id, r.sequence_number, r.partition_key, r.data) for r in records]
            cursor.close()
    finally:
        reader.close()
    return out


async def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_every_put_is_in_the_log_in_order_under_the_number_it_was_answered_with(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "log.db")
    producer = Producer(EmbeddedProcessWriter(path, 4), ProducerConfig())
    keys = [f"session-{n}" for n in range(20)]

    async def main() -> list[Written]:
        producer.start()
        written = []
        for round_ in range(5):  # several loop turns, each a batch of 100
            puts = [producer.put(Entry(keys[i % 20], f"{round_}-{i}".encode())) for i in range(100)]
            written += await asyncio.gather(*puts)
        await asyncio.to_thread(producer.close)
        return written

    written = asyncio.run(main())
    records = read_all(path)
    assert len(records) == 500
    by_place = {(shard, number): (key, data) for shard, number, key, data in records}
    sent = [(keys[i % 20], f"{r}-{i}".encode()) for r in range(5) for i in range(100)]
    assert [by_place[(w.shard_id, w.sequence_number)] for w in written] == sent
    per_key: dict[str, list[bytes]] = defaultdict(list)
    for _, _, key, data in records:
        per_key[key].append(data)
    for key in keys:
        assert per_key[key] == [data for k, data in sent if k == key]


def test_batches_waiting_in_the_pipe_share_one_commit_and_are_answered_in_order(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "log.db")
    EmbeddedProcessWriter(path, 2)  # creates the log
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    for batch_id, keys in enumerate((["a", "b"], ["a"], ["c", "a", "b"])):
        os.write(
            source_write, frame([batch_id, [(k, f"{batch_id}{k}".encode()) for k in keys]], ENCODE)
        )
    os.close(source_write)  # the input ends: serve answers what it read, then returns
    args = {"path": path, "shards": 2, "retention_hours": 24.0}
    serve({**args, "max_batch_records": 500, "max_batch_bytes": 1 << 20}, source_read, sink_write)
    os.close(sink_write)
    answers = Frames(msgspec.msgpack.Decoder().decode).feed(os.read(sink_read, 1 << 16))
    os.close(source_read)
    os.close(sink_read)
    assert [a[0] for a in answers] == [0, 1, 2]
    assert [a[2] for a in answers] == [1, 0, 0]  # one commit for the three
    assert [len(a[1]) for a in answers] == [2, 1, 3]
    sent = (["a", "b"], ["a"], ["c", "a", "b"])
    numbers_of_a = [
        place[1]
        for answer, keys in zip(answers, sent, strict=True)
        for place, key in zip(answer[1], keys, strict=True)
        if key == "a"
    ]
    assert numbers_of_a == sorted(numbers_of_a) and len(set(numbers_of_a)) == 3
    assert {key for _, _, key, _ in read_all(path)} == {"a", "b", "c"}


def test_commits_keep_to_the_batch_limits_and_never_split_a_batch() -> None:
    batches = [[n, [("k", b"x" * 10)] * size] for n, size in enumerate((3, 3, 5, 1, 9))]
    groups = _groups(batches, limit_records=6, limit_bytes=1 << 20)
    assert [[b[0] for b in g] for g in groups] == [[0, 1], [2, 3], [4]]
    by_bytes = _groups(batches, limit_records=100, limit_bytes=60)
    assert [[b[0] for b in g] for g in by_bytes] == [[0], [1], [2], [3], [4]]


def test_a_writer_process_that_dies_fails_what_it_had_not_answered_and_is_replaced(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "log.db")
    writer = EmbeddedProcessWriter(path, 4)
    producer = Producer(writer, ProducerConfig())

    async def main() -> None:
        producer.start()
        first = await producer.put(Entry("k", b"before"))
        child = writer._process
        assert child is not None
        os.kill(child.pid, signal.SIGSTOP)  # holds the next batch unanswered
        in_flight = asyncio.ensure_future(producer.put(Entry("k", b"in flight")))
        await wait_for(lambda: bool(writer._waiting))  # sent down the pipe, not answered
        assert not in_flight.done()
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(Unavailable) as refused:
            await in_flight
        assert refused.value.code == "StreamUnavailable"
        # refused at once for a moment (the stream seemed unreachable), then a new process
        await wait_for(lambda: not _refuses(producer))
        after = await producer.put(Entry("k", b"after"))
        assert writer._process is not None and writer._process.pid != child.pid
        assert int(after.sequence_number) > int(first.sequence_number)
        await asyncio.to_thread(producer.close)

    asyncio.run(main())
    data = [d for _, _, key, d in read_all(path) if key == "k"]
    assert data[0] == b"before" and data[-1] == b"after"  # "in flight" may be there or not


def _refuses(producer: Producer) -> bool:
    return time.monotonic() < producer._unavailable_until


def test_close_waits_for_every_answer_and_the_process_exits_cleanly(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    writer = EmbeddedProcessWriter(path, 4)
    producer = Producer(writer, ProducerConfig())

    async def main() -> tuple[list[Written], int]:
        producer.start()
        await producer.put(Entry("k", b"first"))  # answered: the process is serving
        child = writer._process
        assert child is not None
        os.kill(child.pid, signal.SIGTERM)  # ignored: the service drains it
        puts = [asyncio.ensure_future(producer.put(Entry(f"k{n}", b"x"))) for n in range(300)]
        await asyncio.sleep(0)  # the puts queue; the loop submits them at the end of its turn
        closing = threading.Thread(target=producer.close)
        closing.start()
        done = await asyncio.gather(*puts)
        await asyncio.to_thread(closing.join, 30)
        assert producer.depth == 0
        return done, child.wait(5)

    done, status = asyncio.run(main())
    assert status == 0
    assert len(done) == 300
    assert len(read_all(path)) == 301


def test_refuses_a_log_with_another_shard_count_when_built(tmp_path: Path) -> None:
    path = str(tmp_path / "log.db")
    EmbeddedProcessWriter(path, 4)
    with pytest.raises(Exception, match="shard"):
        EmbeddedProcessWriter(path, 2)
