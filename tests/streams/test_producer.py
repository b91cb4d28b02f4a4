"""The group-commit producer: batching, durability before ack, fast refusal, drain."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from schemas.config import ProducerConfig
from schemas.errors import Unavailable
from streams.base import Entry, WriteStats, Written
from streams.embedded import EmbeddedReader, EmbeddedWriter
from streams.producer import Producer


class RecordingWriter:
    """A function-backed writer: records batches, can be told to fail or to block."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.batches: list[list[Entry]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.closed = False

    def put_batch(self, entries: Sequence[Entry]) -> tuple[list[Written], WriteStats]:
        self.entered.set()
        self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(entries))
        return [Written("shardId-0", str(i)) for i in range(len(entries))], WriteStats(1, 10, 1)

    def check(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def run(coro):
    return asyncio.run(coro)


def test_concurrent_puts_share_batches_and_are_durable_when_acked(tmp_path):
    path = str(tmp_path / "s.db")
    producer = Producer(EmbeddedWriter(path, 4), ProducerConfig(linger_ms=5))
    producer.start()

    async def main():
        return await asyncio.gather(*(producer.put(Entry(f"k{i}", b"x")) for i in range(300)))

    written = run(main())
    assert len(written) == 300
    # Acked means durable: a separate reader sees every record before the producer closes.
    reader = EmbeddedReader(path)
    total = sum(len(reader.open(s.shard_id).read(1000).records) for s in reader.list_shards())
    assert total == 300
    producer.close()


def test_batches_respect_record_and_byte_limits():
    writer = RecordingWriter()
    writer.gate.clear()
    producer = Producer(
        writer, ProducerConfig(linger_ms=0, max_batch_records=50, max_batch_bytes=1000)
    )
    producer.start()

    async def main():
        tasks = [asyncio.ensure_future(producer.put(Entry("k", b"y" * 99))) for _ in range(120)]
        await asyncio.to_thread(writer.entered.wait, 5)
        writer.gate.set()
        return await asyncio.gather(*tasks)

    run(main())
    producer.close()
    assert sum(len(b) for b in writer.batches) == 120
    assert all(len(b) <= 10 for b in writer.batches)  # 10 x (99 + 1) bytes = the byte limit
    flat = [e for b in writer.batches for e in b]
    assert len(flat) == 120


def test_full_queue_refuses_at_once_with_retry_after():
    writer = RecordingWriter()
    writer.gate.clear()
    producer = Producer(writer, ProducerConfig(linger_ms=0, queue_size=5, max_batch_records=1))
    producer.start()

    async def main():
        first = asyncio.ensure_future(producer.put(Entry("k", b"z")))
        await asyncio.to_thread(writer.entered.wait, 5)  # the writer holds the first entry
        waiting = [asyncio.ensure_future(producer.put(Entry("k", b"z"))) for _ in range(6)]
        # Five fill the queue; the sixth is refused at once, without waiting for the stream.
        await asyncio.wait(waiting, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        refused = [w for w in waiting if w.done() and isinstance(w.exception(), Unavailable)]
        writer.gate.set()
        await asyncio.gather(first, *waiting, return_exceptions=True)
        return refused

    refused = run(main())
    producer.close()
    assert len(refused) == 1
    assert refused[0].exception().retry_after == 1
    assert sum(len(b) for b in writer.batches) == 6


def test_stream_failure_fails_the_batch_then_refuses_fast_for_a_while():
    writer = RecordingWriter(fail=Unavailable("connection refused"))
    producer = Producer(writer, ProducerConfig(linger_ms=0))
    producer.start()

    async def main():
        with pytest.raises(Unavailable, match="connection refused"):
            await producer.put(Entry("k", b"a"))
        with pytest.raises(Unavailable, match="unreachable"):
            await producer.put(Entry("k", b"b"))

    run(main())
    producer.close()
    assert writer.batches == []


def test_close_drains_offered_entries_before_closing_the_writer():
    writer = RecordingWriter()
    writer.gate.clear()
    producer = Producer(writer, ProducerConfig(linger_ms=0, max_batch_records=7))
    producer.start()
    assert all(producer.offer(Entry("k", str(i).encode())) for i in range(40))
    writer.gate.set()
    producer.close()
    assert [e.data for b in writer.batches for e in b] == [str(i).encode() for i in range(40)]
    assert writer.closed
    assert not producer.offer(Entry("k", b"late"))


def test_put_times_out_and_withdraws_the_entry():
    writer = RecordingWriter()
    writer.gate.clear()
    producer = Producer(
        writer, ProducerConfig(linger_ms=0, max_batch_records=1, put_timeout_ms=100)
    )
    producer.start()

    async def main():
        first = asyncio.ensure_future(producer.put(Entry("k", b"first")))
        await asyncio.to_thread(writer.entered.wait, 5)  # the writer holds "first", blocked
        with pytest.raises(Unavailable, match="in time"):
            await producer.put(Entry("k", b"second"))
        writer.gate.set()
        # "first" was already with the writer when its own wait ran out: it is written anyway
        # (at least once), while "second", still queued, was withdrawn.
        await asyncio.gather(first, return_exceptions=True)

    run(main())
    producer.close()
    assert [e.data for b in writer.batches for e in b] == [b"first"]


def test_every_put_gets_its_own_deadline_from_the_one_timer_of_its_loop():
    """Puts settled, timed out and cancelled in any mix: each waits at most ``putTimeoutMs``
    from its own start, also after the waiting ones have all gone and new ones come."""
    writer = RecordingWriter()
    producer = Producer(writer, ProducerConfig(linger_ms=0, put_timeout_ms=300))
    producer.start()

    async def main():
        loop = asyncio.get_running_loop()
        # Written at once: nothing times out.
        assert len(await asyncio.gather(*(producer.put(Entry("k", b"w")) for _ in range(5)))) == 5
        writer.entered.clear()
        writer.gate.clear()  # the writer holds the next call
        held = asyncio.ensure_future(producer.put(Entry("k", b"held")))
        await asyncio.to_thread(writer.entered.wait, 5)
        cancelled = asyncio.ensure_future(producer.put(Entry("k", b"cancelled")))
        started = loop.time()
        early = asyncio.ensure_future(producer.put(Entry("k", b"early")))
        await asyncio.sleep(0.15)
        later_start = loop.time()
        later = asyncio.ensure_future(producer.put(Entry("k", b"later")))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(Unavailable, match="in time"):
            await early
        early_waited = loop.time() - started
        with pytest.raises(Unavailable, match="in time"):
            await later
        later_waited = loop.time() - later_start
        assert 0.25 <= early_waited < 1.0 and 0.25 <= later_waited < 1.0
        assert loop.time() - started >= 0.4  # "later" had a deadline of its own
        writer.gate.set()
        await asyncio.gather(held, return_exceptions=True)
        # Nothing is waiting now; a new put that stalls still gets its deadline.
        writer.gate.clear()
        writer.entered.clear()
        first_again = asyncio.ensure_future(producer.put(Entry("k", b"again")))
        await asyncio.to_thread(writer.entered.wait, 5)
        with pytest.raises(Unavailable, match="in time"):
            await first_again
        writer.gate.set()

    run(main())
    producer.close()
    # Withdrawn puts were never written: what was queued when its wait ran out stayed out,
    # and the cancelled put's entry, older than putTimeoutMs when the writer was free again,
    # was dropped from its batch.
    written = [e.data for b in writer.batches for e in b]
    assert written.count(b"w") == 5
    assert b"early" not in written and b"later" not in written and b"cancelled" not in written


class LanedFake:
    """A function-backed ``LanedWriter``: lanes from a dict, calls held at a gate."""

    def __init__(self, lanes: dict[str, str]) -> None:
        self.lanes = lanes
        self.routing_epoch = 0
        self.calls: list[list[bytes]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def load_lanes(self) -> None:
        return None

    def lane(self, entry: Entry) -> str:
        return self.lanes[entry.partition_key]

    def attempt(self, entries: Sequence[Entry]) -> tuple[list[Written | None], WriteStats]:
        with self._lock:
            self.calls.append([e.data for e in entries])
        self.entered.set()
        self.gate.wait(10)
        return [Written(self.lane(e), e.data.decode()) for e in entries], WriteStats(1, 1, 1)

    def put_batch(self, entries: Sequence[Entry]) -> tuple[list[Written], WriteStats]:
        raise AssertionError("a laned writer is driven through attempt")

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_a_key_that_changes_lanes_waits_for_the_call_in_flight():
    writer = LanedFake({"k": "shard-a", "other": "shard-b"})
    producer = Producer(writer, ProducerConfig(linger_ms=0, max_in_flight=4))
    producer.start()

    async def main():
        first = asyncio.ensure_future(producer.put(Entry("k", b"1")))
        await asyncio.to_thread(writer.entered.wait, 5)  # "1" is in flight on shard-a
        # A reshard moves "k" to shard-b: "2" must not be sent while "1" may still be
        # written, or the two could land out of order.
        writer.lanes = {"k": "shard-b", "other": "shard-b"}
        writer.routing_epoch = 1
        second = asyncio.ensure_future(producer.put(Entry("k", b"2")))
        done, _ = await asyncio.wait([second], timeout=0.3)
        assert not done and writer.calls == [[b"1"]]
        writer.gate.set()
        return await asyncio.gather(first, second)

    written = run(main())
    producer.close()
    assert [w.sequence_number for w in written] == ["1", "2"]
    assert writer.calls == [[b"1"], [b"2"]]


class BuggyLoopWriter:
    """A ``LoopWriter`` whose first ``submit`` raises outside the error tree; later batches
    are answered at once, on the loop."""

    def __init__(self) -> None:
        self.submitted: list[list[Entry]] = []
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def submit(self, entries, done) -> None:
        if not self.submitted:
            self.submitted.append([])
            raise KeyError("a bug")
        self.submitted.append(list(entries))
        written = [Written("shardId-0", str(n)) for n in range(len(entries))]
        asyncio.get_running_loop().call_soon(done, written, WriteStats(len(entries), 0, 1))

    def check(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("kind", ["thread", "loop"])
def test_a_writer_bug_fails_its_batch_but_later_puts_are_not_refused(kind):
    writer = RecordingWriter(fail=KeyError("a bug")) if kind == "thread" else BuggyLoopWriter()
    producer = Producer(writer, ProducerConfig(linger_ms=0))
    producer.start()

    async def main():
        with pytest.raises(Unavailable, match="stream write failed: KeyError") as refused:
            await producer.put(Entry("k", b"a"))
        assert refused.value.status == 503
        if kind == "thread":
            writer.fail = None
        return await producer.put(Entry("k", b"b"))

    written = run(main())
    assert written.shard_id == "shardId-0"
    assert producer.depth == 0
    producer.close()
    assert writer.closed
    if kind == "thread":
        assert writer.batches == [[Entry("k", b"b")]]
    else:
        assert writer.submitted == [[], [Entry("k", b"b")]]
