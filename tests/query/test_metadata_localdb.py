"""The ``localdb`` item metadata store: the writer, lookups, and syncing from a file or S3."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aws.clients import client
from query.metadata import MetadataContext, build_metadata, localdb
from query.metadata.localdb import LocalDbMetadata, load_items, read_items
from schemas.config import default_document, load_config
from schemas.errors import Unavailable
from tests.fixtures.servers import wait_until


def context(data_dir: Path) -> MetadataContext:
    return MetadataContext(load_config(default_document()).with_data_dir(str(data_dir)))


def lookup(store: Any, namespace: str, ids: list[str]) -> dict[str, Any]:
    return dict(asyncio.run(store.lookup(namespace, ids)))


def close(store: Any) -> None:
    asyncio.run(store.close())


def test_lookup_returns_known_ids_of_the_namespace_only(tmp_path: Path) -> None:
    path = localdb.default_path(str(tmp_path))
    load_items(path, "shop", [("a", {"name": "A", "price": 9.5}), ("b", {"name": "B"})])
    load_items(path, "other", [("a", {"name": "other A"})])
    store = build_metadata({"type": "localdb"}, context(tmp_path))
    assert isinstance(store, LocalDbMetadata)
    try:
        assert lookup(store, "shop", ["a", "zzz", "b", "a"]) == {
            "a": {"name": "A", "price": 9.5},
            "b": {"name": "B"},
        }
        assert lookup(store, "other", ["a", "b"]) == {"a": {"name": "other A"}}
        assert lookup(store, "shop", []) == {}
    finally:
        close(store)


def test_remembered_metadata_follows_later_loads(tmp_path: Path) -> None:
    path = localdb.default_path(str(tmp_path))
    load_items(path, "shop", [("a", {"v": 1})])
    store = build_metadata({"type": "localdb"}, context(tmp_path))
    try:

        async def twice() -> tuple[Any, Any]:
            return await store.lookup("shop", ["a", "b"]), await store.lookup("shop", ["a", "b"])

        assert asyncio.run(twice()) == ({"a": {"v": 1}}, {"a": {"v": 1}})
        # A load while the store serves: both the changed and the new item are seen.
        load_items(path, "shop", [("a", {"v": 2}), ("b", {"v": 1})])
        assert lookup(store, "shop", ["a", "b"]) == {"a": {"v": 2}, "b": {"v": 1}}
    finally:
        close(store)


def test_lookups_beyond_the_variable_limit_are_chunked(tmp_path: Path) -> None:
    path = str(tmp_path / "items.db")
    count = localdb.CHUNK * 2 + 37
    load_items(path, "shop", ((f"i{n}", {"n": n}) for n in range(count)))
    # More ids than one statement may bind, half of them unknown.
    wanted = [f"i{n}" for n in range(count)] + [f"missing{n}" for n in range(count)]
    found = read_items(path, "shop", wanted)
    assert len(found) == count
    assert found[f"i{count - 1}"] == {"n": count - 1}


def test_a_later_load_replaces_an_item(tmp_path: Path) -> None:
    path = str(tmp_path / "items.db")
    assert load_items(path, "shop", [("a", {"v": 1}), ("b", {"v": 1})]) == 2
    assert load_items(path, "shop", [("a", {"v": 2}), ("a", {"v": 3})]) == 2
    assert read_items(path, "shop", ["a", "b"]) == {"a": {"v": 3}, "b": {"v": 1}}


def test_a_load_whose_rows_fail_midway_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "items.db")
    load_items(path, "shop", [("a", {"v": 1})])

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        yield "a", {"v": 2}
        yield "b", {"v": 2}
        raise ValueError("bad row 3")

    with pytest.raises(ValueError, match="bad row 3"):
        load_items(path, "shop", rows())
    assert read_items(path, "shop", ["a", "b"]) == {"a": {"v": 1}}


def test_a_missing_file_has_no_items_and_a_corrupt_one_raises(tmp_path: Path) -> None:
    assert read_items(str(tmp_path / "nothing.db"), "shop", ["a"]) == {}
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Unavailable, match=r"corrupt\.db"):
        read_items(str(corrupt), "shop", ["a"])


def test_a_local_source_is_copied_and_newer_versions_are_picked_up(tmp_path: Path) -> None:
    source = str(tmp_path / "published" / "items.db")
    load_items(source, "shop", [("a", {"v": 1})])
    settings = {"type": "localdb", "uri": source, "syncInterval": 1}
    store = LocalDbMetadata(settings, context(tmp_path / "data"))
    try:
        assert lookup(store, "shop", ["a", "b"]) == {"a": {"v": 1}}
        assert store.path != source and store.path.startswith(str(tmp_path / "data"))
        load_items(source, "shop", [("a", {"v": 2}), ("b", {"v": 2})])
        wait_until(
            lambda: lookup(store, "shop", ["a", "b"]) == {"a": {"v": 2}, "b": {"v": 2}},
            what="the store to sync the new version",
        )
    finally:
        close(store)


@pytest.fixture
def s3_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A fresh bucket on moto; the store's own S3 client finds moto through the standard
    ``AWS_ENDPOINT_URL_S3`` variable."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    s3 = client("s3", endpoint_url=moto_server)
    bucket = f"items-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    yield s3, bucket
    s3.close()


def publish(s3: Any, bucket: str, key: str, folder: Path, rows: list[tuple[str, Any]]) -> None:
    path = folder / f"{uuid.uuid4().hex}.db"
    load_items(str(path), "shop", rows)
    s3.upload_file(str(path), bucket, key)


def test_an_s3_source_is_synced_and_a_bad_upload_keeps_the_current_copy(
    s3_bucket: tuple[Any, str], tmp_path: Path
) -> None:
    s3, bucket = s3_bucket
    publish(s3, bucket, "meta/items.db", tmp_path, [("a", {"v": 1})])
    settings = {"type": "localdb", "uri": f"s3://{bucket}/meta/items.db", "syncInterval": 1}
    store = LocalDbMetadata(settings, context(tmp_path / "data"))
    try:
        assert lookup(store, "shop", ["a"]) == {"a": {"v": 1}}

        publish(s3, bucket, "meta/items.db", tmp_path, [("a", {"v": 2}), ("b", {"v": 2})])
        wait_until(
            lambda: lookup(store, "shop", ["a", "b"]) == {"a": {"v": 2}, "b": {"v": 2}},
            what="the store to sync the newer upload",
        )

        s3.put_object(Bucket=bucket, Key="meta/items.db", Body=b"not a database")
        assert store.sync_now() is False
        assert "not an items database" in (store._source.last_error or "")  # type: ignore[union-attr]
        assert lookup(store, "shop", ["a", "b"]) == {"a": {"v": 2}, "b": {"v": 2}}
    finally:
        close(store)


def test_lookups_fail_while_an_s3_source_has_never_been_fetched(
    s3_bucket: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bucket = s3_bucket
    monkeypatch.setattr(localdb, "FIRST_SYNC_WAIT", 0.2)
    settings = {"type": "localdb", "uri": f"s3://{bucket}/absent.db", "syncInterval": 0}
    store = LocalDbMetadata(settings, context(tmp_path))
    try:
        with pytest.raises(Unavailable, match="not available yet"):
            lookup(store, "shop", ["a"])
    finally:
        close(store)
