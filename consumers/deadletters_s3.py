"""Dead letters in S3 (``deadLetter: {"uri": "s3://BUCKET/PREFIX"}``), for AWS mode and Lambda.

Layout under the prefix, one folder per consumer group (url-quoted, as in the file store):

* ``<group>/dt=YYYY-MM-DD/<epoch ms, 13 digits>-<uuid>.jsonl`` — one object per ``put`` (and
  per day of the letters' last attempt), JSON lines as in ``consumers.deadletters``; the key
  order is the order they were written, which is the order ``list`` yields them in;
* ``<group>/redriven/<epoch ms>-<uuid>.txt`` — one object per ``mark_redriven`` call, one
  letter id per line.

Objects are never appended to or rewritten, so concurrent writers (Lambda containers, several
``p13n consume`` processes) need no coordination. ``put`` is durable once PutObject returned.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aws.clients import client as aws_client
from aws.errors import translate
from consumers.deadletters import DeadLetter
from schemas.errors import ConfigError

_AWS_ERRORS = (ClientError, BotoCoreError)
REDRIVEN_FOLDER = "redriven"


def _group_folder(group: str) -> str:
    return urllib.parse.quote(group, safe="")


def _object_name() -> str:
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"


class S3DeadLetterStore:
    """``DeadLetterStore`` in an S3 bucket under ``prefix`` (may be empty)."""

    def __init__(self, s3: Any, bucket: str, prefix: str = "") -> None:
        self._s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_uri(cls, uri: str, data_dir: str | None = None) -> S3DeadLetterStore:
        """``s3://BUCKET/PREFIX``; the client's endpoint and region are resolved the standard
        way (``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ...)."""
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"expected s3://BUCKET/PREFIX, got {uri}")
        return cls(aws_client("s3", read_timeout=30.0), parsed.netloc, parsed.path)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._s3, method)(Bucket=self.bucket, **kwargs)
        except _AWS_ERRORS as exc:
            raise translate(exc, f"s3 {what} s3://{self.bucket}/{kwargs.get('Key', '')}") from exc

    def _keys(self, folder: str) -> Iterator[str]:
        """Every key under ``folder``/ in key order (ListObjectsV2 pages)."""
        kwargs: dict[str, Any] = {"Prefix": folder + "/" if folder else ""}
        while True:
            page = self._call("ListObjectsV2", "list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _read(self, key: str) -> str:
        body = self._call("GetObject", "get_object", Key=key)["Body"]
        try:
            return body.read().decode("utf-8")  # type: ignore[no-any-return]
        except _AWS_ERRORS as exc:
            raise translate(exc, f"s3 GetObject s3://{self.bucket}/{key}") from exc
        finally:
            body.close()

    def put(self, letters: Sequence[DeadLetter]) -> None:
        by_key: dict[str, list[DeadLetter]] = {}
        name = _object_name()
        for letter in letters:
            day = time.strftime("%Y-%m-%d", time.gmtime(letter.last_attempt_ms / 1000))
            key = self._key(_group_folder(letter.group), f"dt={day}", f"{name}.jsonl")
            by_key.setdefault(key, []).append(letter)
        for key, group_letters in by_key.items():
            body = "".join(json.dumps(letter.to_json()) + "\n" for letter in group_letters)
            self._call(
                "PutObject",
                "put_object",
                Key=key,
                Body=body.encode("utf-8"),
                ContentType="application/x-ndjson",
            )

    def list(self, group: str | None = None) -> Iterator[DeadLetter]:
        folder = self._key(_group_folder(group)) if group else self.prefix
        for key in self._keys(folder):
            parts = key.split("/")
            if not key.endswith(".jsonl") or not parts[-2].startswith("dt="):
                continue
            for line in self._read(key).splitlines():
                if line.strip():
                    yield DeadLetter.from_json(json.loads(line))

    def mark_redriven(self, group: str, letter_ids: Sequence[str]) -> None:
        if not letter_ids:
            return
        key = self._key(_group_folder(group), REDRIVEN_FOLDER, f"{_object_name()}.txt")
        body = "".join(f"{letter_id}\n" for letter_id in letter_ids)
        self._call("PutObject", "put_object", Key=key, Body=body.encode("utf-8"))

    def redriven(self, group: str) -> set[str]:
        done: set[str] = set()
        for key in self._keys(self._key(_group_folder(group), REDRIVEN_FOLDER)):
            done.update(line.strip() for line in self._read(key).splitlines() if line.strip())
        return done
