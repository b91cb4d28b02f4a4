"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import msgspec

# Attributes every LogRecord has; anything else was passed in ``extra`` and is emitted.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry, enc_hook=str).decode()


def configure(level: str = "info") -> None:
    """Route the root logger (and uvicorn's) to JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs requests
    logging.getLogger("botocore").setLevel(logging.WARNING)


class _RequestLine(msgspec.Struct, omit_defaults=True):
    """One access-log line, in ``AccessLog.write``'s field order (a struct encodes faster
    than the dict it replaces)."""

    time: str
    level: str
    logger: str
    message: str
    route: str
    status: int
    ms: float
    code: str | None = None  # omitted when None


class AccessLog:
    """One JSON line per request, buffered: the event loop appends, and the lines are written
    in one call once 32 KiB have gathered or a quarter second after the first of them (a timer
    on the event loop, so the last lines of a burst do not wait for the next request), and on
    ``flush``. Off an event loop only the size and ``flush`` write them.

    Going through ``logging`` would cost a LogRecord, a handler lock and a write system call
    per request — a quarter of the service's throughput. Lines land whole, in order, on the
    same stream as the other logs.
    """

    FLUSH_BYTES = 32 * 1024
    FLUSH_SECONDS = 0.25

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._encoder = msgspec.json.Encoder()
        self._lines: list[bytes] = []
        self._size = 0
        self._second = -1
        self._second_text = ""
        self._millis = -1
        self._millis_text = ""
        self._timer_armed = False

    def write(self, entry: dict[str, Any]) -> None:
        if self._enabled:
            self._append({"time": self._stamp(), "level": "info", "logger": "p13n.access", **entry})

    def request(
        self, method: str, path: str, status: int, route: str, seconds: float, code: str | None
    ) -> None:
        """The line of one HTTP request (``write`` with these fields, built in one go)."""
        if not self._enabled:
            return
        line = _RequestLine(
            self._stamp(),
            "info",
            "p13n.access",
            f"{method} {path} {status}",
            route,
            status,
            round(seconds * 1000, 3),
            code,
        )
        self._append_line(self._encoder.encode(line) + b"\n")

    def _stamp(self) -> str:
        millis = int(time.time() * 1000)
        if millis == self._millis:  # a busy service answers several requests a millisecond
            return self._millis_text
        second, rest = divmod(millis, 1000)
        if second != self._second:  # strftime costs more than the rest of the line
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._millis = millis
        self._millis_text = f"{self._second_text}.{rest:03d}Z"
        return self._millis_text

    def _append(self, entry: dict[str, Any]) -> None:
        self._append_line(self._encoder.encode(entry) + b"\n")

    def _append_line(self, line: bytes) -> None:
        if not self._timer_armed:
            self._arm_timer()
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()

    def _arm_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: 32 KiB or flush() writes the lines
            return
        self._timer_armed = True
        loop.call_later(self.FLUSH_SECONDS, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer_armed = False
        self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._size = 0
        target = getattr(self._stream, "buffer", None)
        if target is None:
            self._stream.write(data.decode())
        else:
            self._stream.flush()  # text already buffered goes first, so order holds
            target.write(data)
            target.flush()
