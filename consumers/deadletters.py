"""Dead letters: records a target could not take, kept with the reason and their original bytes.

A dead letter is one JSON line: its own id, target (consumer group), record id when the bytes
decoded, error type/code/message, attempts, first and last attempt time (epoch ms), the shard
position and partition key, and the original bytes in base64. ``put`` returns once the letters
are durable (a file fsynced, or an S3 PutObject done); the runner checkpoints past a record only
after that. ``mark_redriven`` records letter ids that were sent again, so a second redrive
skips them; a redrive that fails again writes a new letter (with a new id).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from schemas.registry import Registry


@dataclass(frozen=True, slots=True)
class DeadLetter:
    letter_id: str
    group: str
    record_id: str | None
    error_type: str
    code: str
    message: str
    attempts: int
    first_attempt_ms: int
    last_attempt_ms: int
    shard_id: str
    sequence_number: str
    sub_sequence: int
    partition_key: str
    data: bytes

    def to_json(self) -> dict[str, Any]:
        entry = asdict(self)
        entry["data"] = base64.b64encode(self.data).decode()
        return entry

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> DeadLetter:
        fields = {k: entry[k] for k in cls.__dataclass_fields__}
        fields["data"] = base64.b64decode(entry["data"])
        return cls(**fields)


class DeadLetterStore(Protocol):
    def put(self, letters: Sequence[DeadLetter]) -> None: ...

    def list(self, group: str | None = None) -> Iterator[DeadLetter]: ...

    def mark_redriven(self, group: str, letter_ids: Sequence[str]) -> None: ...

    def redriven(self, group: str) -> set[str]: ...


REDRIVEN = "redriven.txt"


def _group_folder(group: str) -> str:
    return urllib.parse.quote(group, safe="")


class FileDeadLetterStore:
    """JSON lines under ``DIR/<group, url-quoted>/YYYY-MM-DD.jsonl``, appended and fsynced."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._lock = threading.Lock()

    def put(self, letters: Sequence[DeadLetter]) -> None:
        by_file: dict[str, list[DeadLetter]] = {}
        for letter in letters:
            day = time.strftime("%Y-%m-%d", time.gmtime(letter.last_attempt_ms / 1000))
            path = os.path.join(self._directory, _group_folder(letter.group), f"{day}.jsonl")
            by_file.setdefault(path, []).append(letter)
        with self._lock:
            for path, group_letters in by_file.items():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                lines = "".join(json.dumps(letter.to_json()) + "\n" for letter in group_letters)
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(lines)
                    handle.flush()
                    os.fsync(handle.fileno())

    def mark_redriven(self, group: str, letter_ids: Sequence[str]) -> None:
        path = os.path.join(self._directory, _group_folder(group), REDRIVEN)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with self._lock, open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(f"{letter_id}\n" for letter_id in letter_ids))
            handle.flush()
            os.fsync(handle.fileno())

    def redriven(self, group: str) -> set[str]:
        path = os.path.join(self._directory, _group_folder(group), REDRIVEN)
        if not os.path.exists(path):
            return set()
        with open(path, encoding="utf-8") as handle:
            return {line.strip() for line in handle if line.strip()}

    def list(self, group: str | None = None) -> Iterator[DeadLetter]:
        if not os.path.isdir(self._directory):
            return
        folders = [_group_folder(group)] if group else sorted(os.listdir(self._directory))
        for folder in folders:
            path = os.path.join(self._directory, folder)
            if not os.path.isdir(path):
                continue
            for name in sorted(os.listdir(path)):
                if name.endswith(".jsonl") and name != REDRIVEN:
                    with open(os.path.join(path, name), encoding="utf-8") as handle:
                        for line in handle:
                            if line.strip():
                                yield DeadLetter.from_json(json.loads(line))

    @classmethod
    def from_uri(cls, uri: str | None, data_dir: str) -> FileDeadLetterStore:
        """``file://DIR``, or nothing: ``<dataDir>/dead-letters``."""
        if uri is None:
            return cls(os.path.join(data_dir, "dead-letters"))
        parsed = urllib.parse.urlsplit(uri)
        return cls(parsed.netloc + parsed.path if parsed.netloc else parsed.path)


# URI scheme → the store class; each has ``from_uri(uri, data_dir)``.
STORES: Registry[Any] = Registry(
    {
        "file": "consumers.deadletters:FileDeadLetterStore",
        "s3": "consumers.deadletters_s3:S3DeadLetterStore",
    },
    unknown="unsupported dead letter location {uri}",
)


def dead_letter_store(uri: str | None, data_dir: str) -> DeadLetterStore:
    """The store ``uri`` names (``file://DIR``, ``s3://BUCKET/PREFIX``); nothing: the data
    dir's ``dead-letters`` folder."""
    scheme = "file" if uri is None else urllib.parse.urlsplit(uri).scheme
    store: DeadLetterStore = STORES.lookup(scheme, uri=uri).from_uri(uri, data_dir)
    return store
