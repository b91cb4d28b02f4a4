"""The ``dynamodb`` item metadata store against moto over a socket, and behind a proxy that
answers part of each BatchGetItem as UnprocessedKeys. Tests of the p13n layout name it; the
sample project's layout (the default) has tests of its own at the end."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aws.clients import client
from query.metadata import MetadataContext, build_metadata
from query.metadata.dynamodb import BATCH, MAX_ROUNDS, DynamoDbMetadata, plain, write_items
from schemas.config import default_document, load_config
from schemas.errors import NotFound, Throttled, Unavailable
from tests.fixtures.servers import free_port

TARGET = "DynamoDB_20120810."


def context(tmp_path: Path) -> MetadataContext:
    return MetadataContext(load_config(default_document()).with_data_dir(str(tmp_path)))


def lookup(store: Any, namespace: str, ids: list[str]) -> dict[str, Any]:
    return dict(asyncio.run(store.lookup(namespace, ids)))


@pytest.fixture
def make_table(moto_server: str) -> Iterator[Callable[..., str]]:
    """``make_table(name=None) -> name``: a new items table on moto, deleted afterwards."""
    dynamodb = client("dynamodb", endpoint_url=moto_server)
    created: list[str] = []

    def make(name: str | None = None) -> str:
        name = name or f"items-{uuid.uuid4().hex[:12]}"
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "itemId", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "itemId", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        created.append(name)
        return name

    yield make
    for name in created:
        dynamodb.delete_table(TableName=name)
    dynamodb.close()


def fill(endpoint: str, table: str, count: int) -> None:
    rows = ((f"i{n}", {"name": f"item {n}", "rank": n}) for n in range(count))
    settings = {"type": "dynamodb", "layout": "p13n", "tableName": table, "endpointUrl": endpoint}
    assert write_items(settings, "shop", rows) == count


def test_lookups_of_more_than_one_batch_find_every_item(
    moto_server: str, make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table()
    count = BATCH * 2 + 50
    fill(moto_server, table, count)
    settings = {
        "type": "dynamodb",
        "layout": "p13n",
        "tableName": table,
        "endpointUrl": moto_server,
    }
    store = build_metadata(settings, context(tmp_path))
    assert isinstance(store, DynamoDbMetadata)
    try:
        wanted = [f"i{n}" for n in range(count)] + ["unknown", "i0"]
        found = lookup(store, "shop", wanted)
        assert len(found) == count
        assert found["i7"] == {"name": "item 7", "rank": 7}
        assert lookup(store, "shop", []) == {}
    finally:
        asyncio.run(store.close())


def test_attribute_types_become_plain_json(
    moto_server: str, make_table: Callable[..., str], tmp_path: Path
) -> None:
    table = make_table()
    dynamodb = client("dynamodb", endpoint_url=moto_server)
    dynamodb.put_item(
        TableName=table,
        Item={
            "itemId": {"S": "a"},
            "price": {"N": "9.99"},
            "stock": {"N": "3"},
            "tags": {"SS": ["red", "blue"]},
            "dims": {"M": {"w": {"N": "2"}, "sizes": {"L": [{"N": "1.5"}, {"S": "XL"}]}}},
            "live": {"BOOL": True},
            "blob": {"B": b"\x00\x01"},
            "none": {"NULL": True},
        },
    )
    dynamodb.close()
    store = DynamoDbMetadata(
        {"type": "dynamodb", "layout": "p13n", "tableName": table, "endpointUrl": moto_server},
        context(tmp_path),
    )
    try:
        found = lookup(store, "shop", ["a"])
    finally:
        asyncio.run(store.close())
    metadata = found["a"]
    assert metadata == {
        "price": 9.99,
        "stock": 3,
        "tags": ["blue", "red"],
        "dims": {"w": 2, "sizes": [1.5, "XL"]},
        "live": True,
        "blob": "AAE=",
        "none": None,
    }
    assert type(metadata["stock"]) is int
    json.dumps(metadata)  # serialisable as it is
    assert plain(Decimal("1E+2")) == 100


def test_the_table_defaults_to_one_per_namespace(
    moto_server: str, make_table: Callable[..., str], tmp_path: Path
) -> None:
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    table = make_table(f"p13n-items-{namespace}")
    fill(moto_server, table, 3)
    store = DynamoDbMetadata(
        {"type": "dynamodb", "layout": "p13n", "endpointUrl": moto_server}, context(tmp_path)
    )
    try:
        assert set(lookup(store, namespace, ["i0", "i2", "x"])) == {"i0", "i2"}
        with pytest.raises(NotFound, match="BatchGetItem p13n-items-elsewhere"):
            lookup(store, "elsewhere", ["i0"])
    finally:
        asyncio.run(store.close())


def test_an_unreachable_endpoint_is_unavailable(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = {"type": "dynamodb", "layout": "p13n", "tableName": "t", "endpointUrl": endpoint}
    store = DynamoDbMetadata(settings, context(tmp_path))
    try:
        with pytest.raises(Unavailable, match="BatchGetItem t"):
            lookup(store, "shop", ["a"])
    finally:
        asyncio.run(store.close())


class UnprocessedProxy:
    """Forwards DynamoDB calls to moto; a BatchGetItem call while ``defer_calls`` > 0 sends
    only the first half of its keys on and answers the rest as UnprocessedKeys."""

    def __init__(self, upstream: str, defer_calls: int) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.defer_calls = defer_calls
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                operation = (self.headers.get("X-Amz-Target") or "").removeprefix(TARGET)
                deferred: dict[str, Any] = {}
                if operation == "BatchGetItem":
                    request = json.loads(body)
                    with proxy._lock:
                        proxy.batch_sizes.append(
                            sum(len(t["Keys"]) for t in request["RequestItems"].values())
                        )
                        defer = proxy.defer_calls > 0
                        proxy.defer_calls -= 1
                    if defer:
                        for table, part in request["RequestItems"].items():
                            keys = part["Keys"]
                            half = len(keys) // 2
                            part["Keys"] = keys[:half]
                            deferred[table] = {**part, "Keys": keys[half:]}
                        if not any(p["Keys"] for p in request["RequestItems"].values()):
                            self._reply(200, {"Responses": {}, "UnprocessedKeys": deferred})
                            return
                        body = json.dumps(request).encode()
                status, payload = proxy.forward(self.path, headers, body)
                if deferred and status == 200:
                    # Re-serialised, so moto's x-amz-crc32 header is not passed on.
                    self._reply(status, {**json.loads(payload), "UnprocessedKeys": deferred})
                    return
                self._reply(status, payload)

            def _reply(self, status: int, payload: bytes | dict[str, Any]) -> None:
                data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture
def unprocessed_proxy(moto_server: str) -> Iterator[Callable[[int], UnprocessedProxy]]:
    proxies: list[UnprocessedProxy] = []

    def make(defer_calls: int) -> UnprocessedProxy:
        proxy = UnprocessedProxy(moto_server, defer_calls)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def test_unprocessed_keys_are_asked_again_until_answered(
    moto_server: str,
    make_table: Callable[..., str],
    unprocessed_proxy: Callable[[int], UnprocessedProxy],
    tmp_path: Path,
) -> None:
    table = make_table()
    fill(moto_server, table, 150)
    proxy = unprocessed_proxy(2)  # the first two calls (both chunks) lose half their keys
    pauses: list[float] = []
    settings = {"type": "dynamodb", "layout": "p13n", "tableName": table, "endpointUrl": proxy.url}
    store = DynamoDbMetadata(settings, context(tmp_path), sleep=pauses.append)
    try:
        found = lookup(store, "shop", [f"i{n}" for n in range(150)])
    finally:
        asyncio.run(store.close())
    assert len(found) == 150
    # 100 + 50 keys, then the deferred halves (50 + 25) once more, after a backoff each.
    assert sorted(proxy.batch_sizes) == [25, 50, 50, 100]
    assert len(pauses) == 2 and all(0 <= p <= 1.0 for p in pauses)


def test_keys_never_processed_raise_throttled_after_bounded_rounds(
    moto_server: str,
    make_table: Callable[..., str],
    unprocessed_proxy: Callable[[int], UnprocessedProxy],
    tmp_path: Path,
) -> None:
    table = make_table()
    fill(moto_server, table, 4)
    proxy = unprocessed_proxy(10_000)
    pauses: list[float] = []
    settings = {"type": "dynamodb", "layout": "p13n", "tableName": table, "endpointUrl": proxy.url}
    store = DynamoDbMetadata(settings, context(tmp_path), sleep=pauses.append)
    try:
        with pytest.raises(Throttled, match="still unprocessed") as caught:
            lookup(store, "shop", ["i0", "i1", "i2", "i3"])
    finally:
        asyncio.run(store.close())
    assert caught.value.code == "UnprocessedKeys"
    assert len(proxy.batch_sizes) == MAX_ROUNDS
    assert len(pauses) == MAX_ROUNDS - 1


# -- the sample project's tables, read as they are ---------------------------------------------


def sample_table(endpoint: str, namespace: str) -> str:
    """A table as the sample project's loader made it: named after the namespace, key ``id``,
    the metadata in an ``attributes`` map."""
    name = f"PersonalizationApiItemMetadata_{namespace}"
    dynamodb = client("dynamodb", endpoint_url=endpoint)
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for n in range(3):
            dynamodb.put_item(
                TableName=name,
                Item={
                    "id": {"S": f"item-{n + 1}"},
                    "attributes": {
                        "M": {"name": {"S": f"Item {n + 1}"}, "price": {"N": f"{n + 1}.5"}}
                    },
                },
            )
    finally:
        dynamodb.close()
    return name


def test_the_samples_table_is_the_default_and_read_as_it_is(
    moto_server: str, tmp_path: Path
) -> None:
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    sample_table(moto_server, namespace)
    store = DynamoDbMetadata({"type": "dynamodb", "endpointUrl": moto_server}, context(tmp_path))
    try:
        found = lookup(store, namespace, ["item-1", "item-3", "nope"])
    finally:
        asyncio.run(store.close())
    assert found == {
        "item-1": {"name": "Item 1", "price": 1.5},
        "item-3": {"name": "Item 3", "price": 3.5},
    }


def test_items_loaded_into_the_samples_layout_read_back(moto_server: str, tmp_path: Path) -> None:
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    table = sample_table(moto_server, namespace)
    settings = {"type": "dynamodb", "endpointUrl": moto_server}
    assert write_items(settings, namespace, [("new", {"name": "New", "rank": 2})]) == 1
    dynamodb = client("dynamodb", endpoint_url=moto_server)
    try:
        stored = dynamodb.get_item(TableName=table, Key={"id": {"S": "new"}})["Item"]
    finally:
        dynamodb.close()
    assert stored == {
        "id": {"S": "new"},
        "attributes": {"M": {"name": {"S": "New"}, "rank": {"N": "2"}}},
    }


def test_the_service_decorates_from_the_samples_table(
    moto_server: str, fake_recommender: Any, service_factory: Callable[..., Any]
) -> None:
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    sample_table(moto_server, namespace)
    config = {
        "namespaces": {
            namespace: {
                "inferenceItemMetadata": {"type": "dynamodb", "endpointUrl": moto_server},
                "recommenders": {
                    "recommend-items": {
                        "recs": {
                            "variations": {
                                "remote": {
                                    "type": "http",
                                    "url": fake_recommender.url + "/recs/{userId}?n={numResults}",
                                }
                            }
                        }
                    }
                },
                "eventTargets": [{"type": "interactions"}],
            }
        }
    }
    service = service_factory(config, extra_args=("--no-consumers",))
    with service.client() as client_:
        reply = client_.get(f"/recommend-items/{namespace}/recs/u1?numResults=4")
    assert reply.status_code == 200, reply.text
    items = reply.json()["itemList"]
    assert [i.get("metadata") for i in items] == [
        {"name": "Item 1", "price": 1.5},
        {"name": "Item 2", "price": 2.5},
        {"name": "Item 3", "price": 3.5},
        None,  # item-4 is not in the table
    ]
