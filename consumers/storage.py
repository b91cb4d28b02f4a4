"""Where archive files live: a local folder or an S3 prefix, behind one small interface.

Keys are ``/``-separated paths relative to the root (``file://DIR`` or ``s3://BUCKET/PREFIX``).
``put`` is atomic and durable when it returns: locally the bytes go to a hidden temporary name in
the same folder, are fsynced and renamed into place (then the folder is fsynced); on S3 one
PutObject carries the whole object. Readers therefore never see a partial file.

Failures are raised as ``schemas.errors`` types: ``OSError`` becomes ``Unavailable``, boto
errors are translated by ``aws.errors.translate``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from schemas.errors import ConfigError, Unavailable

# S3 objects smaller than this are read into memory; larger ones spill to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


@dataclass(frozen=True, slots=True)
class StoredFile:
    key: str  # relative to the storage root
    size: int
    modified_ms: int


class Storage(Protocol):
    uri: str

    def put(self, key: str, data: bytes) -> None: ...

    def open(self, key: str) -> IO[bytes]: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, keys: Sequence[str]) -> None: ...

    def folders(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-folders of ``prefix`` (no trailing slash)."""
        ...

    def files(self, prefix: str = "") -> Iterator[StoredFile]:
        """Every file under ``prefix``, recursively, sorted by key."""
        ...


def parse_location(uri: str) -> tuple[str, str, str]:
    """``(scheme, bucket-or-empty, path)`` for ``file://DIR``, ``s3://BUCKET/PREFIX`` or a plain
    path."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"no bucket in {uri}")
        return "s3", parsed.netloc, parsed.path.strip("/")
    if parsed.scheme == "file":
        path = parsed.netloc + parsed.path if parsed.netloc else parsed.path
        return "file", "", urllib.parse.unquote(path)
    if parsed.scheme in ("", "local") or len(parsed.scheme) == 1:  # a path (or C:\ on Windows)
        return "file", "", uri
    raise ConfigError(f"unsupported location {uri}: use file://DIR or s3://BUCKET/PREFIX")


def open_storage(
    uri: str, *, region: str | None = None, endpoint_url: str | None = None
) -> Storage:
    scheme, bucket, path = parse_location(uri)
    if scheme == "s3":
        from aws.clients import client

        return S3Storage(
            client("s3", region=region, endpoint_url=endpoint_url, read_timeout=30.0),
            bucket,
            path,
        )
    return FileStorage(path)


class FileStorage:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        folder = os.path.dirname(path)
        # Hidden and without the final suffix, so a scan for *.avro never sees it.
        temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            _fsync_folder(folder)
        except OSError as exc:
            _remove_quietly(temporary)
            raise Unavailable(f"writing {path} failed: {exc}", code=type(exc).__name__) from exc

    def open(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise Unavailable(f"reading {self._path(key)} failed: {exc}") from exc

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, keys: Sequence[str]) -> None:
        folders = set()
        try:
            for key in keys:
                path = self._path(key)
                if os.path.exists(path):
                    os.remove(path)
                folders.add(os.path.dirname(path))
            for folder in folders:
                _fsync_folder(folder)
        except OSError as exc:
            raise Unavailable(f"deleting from {self.root} failed: {exc}") from exc
        for folder in sorted(folders, reverse=True):  # tidy up emptied folders, best effort
            while folder.startswith(self.root + os.sep):
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                folder = os.path.dirname(folder)

    def folders(self, prefix: str = "") -> list[str]:
        path = self._path(prefix)
        try:
            with os.scandir(path) as entries:
                return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise Unavailable(f"listing {path} failed: {exc}") from exc

    def files(self, prefix: str = "") -> Iterator[StoredFile]:
        base = self._path(prefix)
        if os.path.isfile(base):
            stat = os.stat(base)
            yield StoredFile(prefix, stat.st_size, int(stat.st_mtime * 1000))
            return
        found = []
        for folder, subfolders, names in os.walk(base):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            for name in names:
                if name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:  # deleted since listed (an archive file rolled)
                    continue
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                found.append(StoredFile(key, stat.st_size, int(stat.st_mtime * 1000)))
        yield from sorted(found, key=lambda f: f.key)


class S3Storage:
    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.uri = f"s3://{bucket}/{prefix}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        from aws.errors import translate

        try:
            return getattr(self._s3, method)(**kwargs)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise translate(exc, f"s3 {what}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._call(
            f"PutObject s3://{self.bucket}/{self._key(key)}",
            "put_object",
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
        )

    def open(self, key: str) -> IO[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        from aws.errors import translate

        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned)
        try:
            self._s3.download_fileobj(self.bucket, self._key(key), spool)
        except (BotoCoreError, ClientError, OSError) as exc:
            spool.close()
            raise translate(exc, f"s3 GetObject s3://{self.bucket}/{self._key(key)}") from exc
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return False
            from aws.errors import translate

            raise translate(exc, f"s3 HeadObject s3://{self.bucket}/{self._key(key)}") from exc
        return True

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            part = keys[start : start + DELETE_BATCH]
            answer = self._call(
                f"DeleteObjects s3://{self.bucket}/{self.prefix}",
                "delete_objects",
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(k)} for k in part], "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise Unavailable(
                    f"s3 DeleteObjects: {len(errors)} key(s) not deleted, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                )

    def _pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            extra: dict[str, str] = {"ContinuationToken": token} if token else {}
            page = self._call(
                f"ListObjectsV2 s3://{self.bucket}/{kwargs.get('Prefix', '')}",
                "list_objects_v2",
                Bucket=self.bucket,
                **kwargs,
                **extra,
            )
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def folders(self, prefix: str = "") -> list[str]:
        base = self._key(prefix.rstrip("/") + "/") if prefix else self.prefix
        names = []
        for page in self._pages(Prefix=base, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(base) :].rstrip("/"))
        return sorted(names)

    def files(self, prefix: str = "") -> Iterator[StoredFile]:
        base = self._key(prefix)
        for page in self._pages(Prefix=base):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key.endswith("/"):
                    continue
                modified = int(item["LastModified"].timestamp() * 1000)
                yield StoredFile(key, int(item["Size"]), modified)


def _fsync_folder(folder: str) -> None:
    """Make a rename or removal in ``folder`` durable (no-op where folders can't be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
