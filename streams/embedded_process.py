"""The embedded log written by a process of its own: the service's ``LoopWriter`` for it.

Why a process: with the writer on a thread of the service, every batch needed the GIL twice
(to start the write, to answer the waiting requests) while the event loop held it, and
CPython hands the GIL over only when its holder blocks or after the 5 ms switch interval. So a
batch was taken only once the loop had nothing else to do, every waiting request was in it,
and the loop then idled through the commit: a ping-pong, the loop busy or the writer busy,
never both. A process has its own interpreter: the loop sends a batch down a pipe at the end
of its turn and goes on; the writer commits while the loop serves the next requests.
Measured (``bench.ingest``'s load, 50 clients, the two side by side in each run): the writer
thread 45%, 42% and 41%, the writer process 51%, 43% and 50% of the bare endpoint; the event
loop's thread busy 80% of the time with the thread, 93% with the process.

Protocol, both ways length-prefixed MessagePack frames (4 bytes little-endian, then the body):

* to the writer: ``[batch_id, [[partition_key, data], ...]]``;
* back: ``[batch_id, [[shard_index, sequence_number], ...], calls]`` once the batch is
  committed (``calls``: 1 for the first batch of a commit, 0 for the batches that shared it),
  or ``[batch_id, null, message, retry_after]`` when its commit failed.

The writer commits every batch waiting in the pipe together (up to ``max_batch_records`` and
``max_batch_bytes`` per commit), in the order sent, with ``streams.embedded.EmbeddedWriter``:
the same log, numbering and durability (``synchronous=FULL``: answered once on disk). It
exits when its input ends (the service closed it, or died), after answering what it read;
it ignores SIGINT and SIGTERM, which stop the service, so that the service can drain it.

When the writer process ends unexpectedly, the batches it has not answered fail with
``Unavailable`` (their requests get 503; some may be in the log: at least once), and the
next batch starts a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from schemas.errors import P13nError, Unavailable
from streams.base import Entry, WriteStats, Written
from streams.embedded import EmbeddedWriter, open_log

log = logging.getLogger("p13n.stream")

_HEADER = struct.Struct("<I")
_READ_BYTES = 1 << 20
# How long close() waits for the writer process to finish what it was sent.
CLOSE_SECONDS = 30.0

Done = Callable[[list[Written] | P13nError, WriteStats], None]


def frame(body: Any, encode: Callable[[Any], bytes]) -> bytes:
    payload = encode(body)
    return _HEADER.pack(len(payload)) + payload


class Frames:
    """Splits a byte stream into frame bodies (decoded) as bytes arrive."""

    def __init__(self, decode: Callable[[bytes], Any]) -> None:
        self._buffer = bytearray()
        self._decode = decode

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        bodies = []
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + length
            if end > len(buffer):
                break
            bodies.append(self._decode(bytes(buffer[start + _HEADER.size : end])))
            start = end
        del buffer[:start]
        return bodies


class EmbeddedProcessWriter:
    """``LoopWriter`` over the embedded log, written by a child process (module docstring).

    Built in the service's process: it opens the log once (creating it, checking its shard
    count) so that a bad path fails at start-up; the child starts with ``open()`` or with the
    first batch. Used from one event loop's thread.
    """

    def __init__(
        self,
        path: str,
        shards: int = 4,
        retention_hours: float = 24.0,
        max_batch_records: int = 500,
        max_batch_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._shard_ids = [shard.shard_id for shard in open_log(path, shards)]
        self._args = json.dumps(
            {
                "path": path,
                "shards": shards,
                "retention_hours": retention_hours,
                "max_batch_records": max_batch_records,
                "max_batch_bytes": max_batch_bytes,
            }
        )
        self._encode = msgspec.msgpack.Encoder().encode
        self._process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frames = Frames(msgspec.msgpack.Decoder().decode)
        self._out = bytearray()  # frames not yet taken by the pipe
        self._waiting: dict[int, tuple[Done, int]] = {}  # batch id -> (done, entries)
        self._next_id = 0
        self._blocked = False  # the pipe took less than it was given: waiting to write

    # -- the child ----------------------------------------------------------------------------

    def open(self) -> None:
        """Start the writer process now (else the first batch does)."""
        if self._process is None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "streams.embedded_process", self._args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )

    def _attach(self, loop: asyncio.AbstractEventLoop) -> subprocess.Popen[bytes]:
        self.open()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        if self._loop is not loop:
            self._loop = loop
            os.set_blocking(process.stdin.fileno(), False)
            os.set_blocking(process.stdout.fileno(), False)
            loop.add_reader(process.stdout.fileno(), self._readable)
        return process

    def _ended(self, why: str) -> None:
        """The child is gone (or unusable): fail what it did not answer; the next batch starts
        another."""
        process, self._process = self._process, None
        loop, self._loop = self._loop, None
        if process is not None:
            if loop is not None and not loop.is_closed():
                _detach(loop, process)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
            if process.poll() is None:
                process.kill()
            process.wait()
        self._out.clear()
        self._blocked = False
        self._frames = Frames(msgspec.msgpack.Decoder().decode)
        waiting, self._waiting = self._waiting, {}
        if waiting:
            log.warning("the embedded stream's writer process ended: %s", why)
        error = Unavailable(f"the embedded stream's writer process ended: {why}", retry_after=1)
        for done, _ in waiting.values():
            done(error, WriteStats())

    # -- LoopWriter ---------------------------------------------------------------------------

    def submit(self, entries: Sequence[Entry], done: Done) -> None:
        """Send one batch; ``done`` is called on this loop once it is committed or failed."""
        process = self._attach(asyncio.get_running_loop())
        batch_id = self._next_id
        self._next_id += 1
        self._waiting[batch_id] = (done, len(entries))
        self._out += frame([batch_id, [(e.partition_key, e.data) for e in entries]], self._encode)
        if not self._blocked:  # else the pipe is full: _writable sends it when it drains
            self._send(process)

    def _send(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        try:
            sent = os.write(process.stdin.fileno(), self._out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the child is gone
            self._ended(f"cannot write to it ({exc})")
            return
        del self._out[:sent]
        loop = self._loop
        if loop is None:
            return
        if self._out and not self._blocked:
            self._blocked = True
            loop.add_writer(process.stdin.fileno(), self._writable)
        elif not self._out and self._blocked:
            self._blocked = False
            loop.remove_writer(process.stdin.fileno())

    def _writable(self) -> None:
        if self._process is not None:
            self._send(self._process)

    def _readable(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        try:
            data = os.read(process.stdout.fileno(), _READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._ended(f"cannot read from it ({exc})")
            return
        if not data:
            self._ended(f"exit status {process.wait()}")
            return
        ids = self._shard_ids
        for answer in self._frames.feed(data):
            done, entries = self._waiting.pop(answer[0])
            if answer[1] is None:
                done(Unavailable(answer[2], retry_after=answer[3]), WriteStats())
                continue
            written = [Written(ids[index], str(number)) for index, number in answer[1]]
            done(written, WriteStats(stream_records=entries, calls=answer[2]))

    def check(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise Unavailable("the embedded stream's writer process has exited")

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """End the child's input and wait for it; call it once every batch is done."""
        process, self._process = self._process, None
        if process is None:
            return
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            _detach_from(loop, process)
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _detach_from(loop: asyncio.AbstractEventLoop, process: subprocess.Popen[bytes]) -> None:
    """Take the child's pipes off ``loop`` before they close, from any thread."""
    try:
        on_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        on_loop = False
    if on_loop or not loop.is_running():
        _detach(loop, process)
        return
    detached = threading.Event()

    def detach() -> None:
        _detach(loop, process)
        detached.set()

    loop.call_soon_threadsafe(detach)
    detached.wait(5)


def _detach(loop: asyncio.AbstractEventLoop, process: subprocess.Popen[bytes]) -> None:
    for pipe, remove in ((process.stdout, loop.remove_reader), (process.stdin, loop.remove_writer)):
        if pipe is not None and not pipe.closed:
            remove(pipe.fileno())


# -- the writer process --------------------------------------------------------------------------


def serve(args: dict[str, Any], source: int = 0, sink: int = 1) -> None:
    """The child's loop: read what has arrived, commit it, answer, until the input ends."""
    writer = EmbeddedWriter(args["path"], args["shards"], args["retention_hours"])
    index = {shard_id: n for n, shard_id in enumerate(writer.shard_ids)}
    encode = msgspec.msgpack.Encoder().encode
    frames = Frames(msgspec.msgpack.Decoder(tuple[int, list[tuple[str, bytes]]]).decode)
    limit_records, limit_bytes = args["max_batch_records"], args["max_batch_bytes"]
    ended = False
    while not ended:
        data = os.read(source, _READ_BYTES)
        ended = not data
        batches = frames.feed(data)
        # Whatever else is already in the pipe joins this commit.
        while not ended and select.select([source], [], [], 0)[0]:
            more = os.read(source, _READ_BYTES)
            ended = not more
            batches += frames.feed(more)
        answers = bytearray()
        for group in _groups(batches, limit_records, limit_bytes):
            answers += _commit(writer, index, group, encode)
        if answers:
            _write_all(sink, answers)
    writer.close()


def _groups(batches: list[Any], limit_records: int, limit_bytes: int) -> list[list[Any]]:
    """Consecutive batches per commit, each commit within the limits (a batch is never split;
    one larger than the limits is a commit of its own)."""
    groups: list[list[Any]] = []
    records = size = 0
    for batch in batches:
        count = len(batch[1])
        weight = sum(len(key) + len(data) for key, data in batch[1])
        if groups and records + count <= limit_records and size + weight <= limit_bytes:
            groups[-1].append(batch)
            records += count
            size += weight
        else:
            groups.append([batch])
            records, size = count, weight
    return groups


def _commit(
    writer: EmbeddedWriter, index: dict[str, int], group: list[Any], encode: Callable[[Any], bytes]
) -> bytes:
    entries = [Entry(key, data) for _, records in group for key, data in records]
    try:
        written, _ = writer.put_batch(entries)
    except P13nError as exc:
        return b"".join(
            frame([batch_id, None, exc.message, exc.retry_after or 1], encode)
            for batch_id, _ in group
        )
    out = bytearray()
    start = 0
    for n, (batch_id, records) in enumerate(group):
        mine = written[start : start + len(records)]
        start += len(records)
        places = [(index[w.shard_id], int(w.sequence_number)) for w in mine]
        out += frame([batch_id, places, 1 if n == 0 else 0], encode)
    return bytes(out)


def _write_all(sink: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(sink, view) :]


def main() -> None:
    # SIGINT and SIGTERM stop the service, which then closes our input: finish first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.monotonic()
    try:
        serve(json.loads(sys.argv[1]))
    except BrokenPipeError:  # the service is gone; nothing is waiting for answers
        pass
    except Exception:
        logging.basicConfig()
        log.exception(
            "embedded stream writer process failed after %.1fs", time.monotonic() - started
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
