"""``dynamodb``: item metadata in a DynamoDB table, one table per namespace.

Two layouts (``layout``), so a migration from the sample project reads its tables as they are:

- ``sample`` (the default): the sample project's tables. Table
  ``PersonalizationApiItemMetadata_{namespace}``, partition key ``id`` (string), the metadata
  in the item's ``attributes`` map.
- ``p13n``: table ``p13n-items-{namespace}``, partition key ``itemId`` (string), every other
  attribute of the item is its metadata.

``tableName`` names the table in either layout. Values are returned as plain JSON (numbers as
``int`` or ``float``, sets as sorted lists, binary as base64 text); no sort key.

A lookup asks BatchGetItem for at most ``BATCH`` (100) keys per call, all chunks in parallel in
worker threads. Keys DynamoDB answers as ``UnprocessedKeys`` (throttling, the 16 MB response
limit) are asked again with exponential backoff and full jitter (tenacity), up to ``MAX_ROUNDS``
calls per chunk; keys still unprocessed then raise ``Throttled`` — a partial answer would silently leave
items undecorated. Other failures are translated by ``aws.errors.translate`` (a missing table
is ``NotFound``). The client is built on first use with ``region``/``endpointUrl`` from the
settings (else the standard AWS resolution) and botocore's adaptive retry mode.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from query.settings import option, read_settings
from schemas.errors import ConfigError, Throttled

if TYPE_CHECKING:
    from query.metadata import MetadataContext


@dataclass(frozen=True)
class Layout:
    """Where an item's id and metadata sit in a table of this layout."""

    table: str  # the default table name, formatted with the namespace
    key: str
    nested: str | None  # the attribute holding the metadata; None: all other attributes

    def metadata(self, attributes: dict[str, Any]) -> Any:
        if self.nested is None:
            attributes.pop(self.key, None)
            return attributes
        return attributes.get(self.nested, {})


LAYOUTS: Mapping[str, Layout] = {
    "sample": Layout("PersonalizationApiItemMetadata_{namespace}", "id", "attributes"),
    "p13n": Layout("p13n-items-{namespace}", "itemId", None),
}
DEFAULT_LAYOUT = "sample"
BATCH = 100  # BatchGetItem takes at most 100 keys
MAX_ROUNDS = 6
BACKOFF_BASE = 0.05  # the n-th retry waits up to BACKOFF_BASE * 2**n seconds ...
BACKOFF_CAP = 1.0  # ... and never more than this


class _Unprocessed(Throttled):
    """Keys or items DynamoDB left unprocessed: the one failure a batch call retries itself
    (botocore's adaptive mode already retried the others)."""


def _rounds(sleep: Callable[[float], None]) -> Retrying:
    """Up to ``MAX_ROUNDS`` calls, exponential backoff with full jitter between them; the
    last ``_Unprocessed`` is raised as it is."""
    return Retrying(
        retry=retry_if_exception_type(_Unprocessed),
        stop=stop_after_attempt(MAX_ROUNDS),
        # tenacity counts the first retry as attempt 1: 2 * BASE * 2**(n-1) == BASE * 2**n
        wait=wait_random_exponential(multiplier=2 * BACKOFF_BASE, max=BACKOFF_CAP),
        sleep=sleep,
        reraise=True,
    )


@dataclass(frozen=True)
class DynamoDbSettings:
    """A ``dynamodb`` store's own settings (an ``inferenceItemMetadata`` object)."""

    layout_name: str | None = option("layout", None)  # None: ``DEFAULT_LAYOUT``
    table_name: str | None = option("tableName", None)  # None: the layout's, per namespace
    region: str | None = option("region", None)
    endpoint_url: str | None = option("endpointUrl", None)

    def __post_init__(self) -> None:
        if (self.layout_name or DEFAULT_LAYOUT) not in LAYOUTS:
            known = ", ".join(sorted(LAYOUTS))
            raise ConfigError(f"inferenceItemMetadata (dynamodb): layout must be one of {known}")

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> DynamoDbSettings:
        return read_settings(cls, settings, "inferenceItemMetadata (dynamodb)")

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.layout_name or DEFAULT_LAYOUT]

    def table(self, namespace: str) -> str:
        """The table holding ``namespace``'s items."""
        return self.table_name or self.layout.table.format(namespace=namespace)


def layout_of(settings: Mapping[str, Any]) -> Layout:
    return DynamoDbSettings.of(settings).layout


def table_for(settings: Mapping[str, Any], namespace: str) -> str:
    """The table holding ``namespace``'s items under these settings."""
    return DynamoDbSettings.of(settings).table(namespace)


def plain(value: Any) -> Any:
    """A deserialised DynamoDB value made JSON-serialisable."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {key: plain(inner) for key, inner in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(plain(inner) for inner in value)
    if isinstance(value, list | tuple):
        return [plain(inner) for inner in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "value") and isinstance(value.value, bytes):  # boto3's Binary
        return base64.b64encode(value.value).decode("ascii")
    return value


class DynamoDbMetadata:
    """The ``dynamodb`` item metadata store (see the module docstring)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        context: MetadataContext,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = DynamoDbSettings.of(settings)
        self._layout = self._settings.layout
        self._sleep = sleep
        self._client: Any = None
        self._lock = threading.Lock()

    async def lookup(self, namespace: str, item_ids: Sequence[str]) -> Mapping[str, Any]:
        wanted = list(dict.fromkeys(item_ids))  # BatchGetItem rejects duplicate keys
        if not wanted:
            return {}
        table = self._settings.table(namespace)
        chunks = [wanted[start : start + BATCH] for start in range(0, len(wanted), BATCH)]
        answers = await asyncio.gather(
            *(asyncio.to_thread(self._batch_get, table, chunk) for chunk in chunks)
        )
        found: dict[str, Any] = {}
        for answer in answers:
            found.update(answer)
        return found

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _dynamodb(self) -> Any:
        with self._lock:
            if self._client is None:
                from aws.clients import client

                self._client = client(
                    "dynamodb",
                    region=self._settings.region,
                    endpoint_url=self._settings.endpoint_url,
                    max_attempts=3,
                    retry_mode="adaptive",
                    connect_timeout=1.0,
                    read_timeout=2.0,
                )
            return self._client

    def _batch_get(self, table: str, item_ids: Sequence[str]) -> dict[str, Any]:
        from boto3.dynamodb.types import TypeDeserializer
        from botocore.exceptions import BotoCoreError, ClientError

        from aws.errors import translate

        dynamodb = self._dynamodb()
        deserializer = TypeDeserializer()
        layout = self._layout
        request: dict[str, Any] = {table: {"Keys": [{layout.key: {"S": i}} for i in item_ids]}}
        found: dict[str, Any] = {}

        def call() -> None:
            nonlocal request
            try:
                answer = dynamodb.batch_get_item(RequestItems=request)
            except (BotoCoreError, ClientError, OSError) as exc:
                raise translate(exc, f"dynamodb BatchGetItem {table}") from exc
            for item in answer.get("Responses", {}).get(table, []):
                attributes = {name: deserializer.deserialize(v) for name, v in item.items()}
                item_id = attributes.get(layout.key)
                if isinstance(item_id, str):
                    found[item_id] = plain(layout.metadata(attributes))
            request = answer.get("UnprocessedKeys") or {}
            left = len(request.get(table, {}).get("Keys") or ())
            if left:
                raise _Unprocessed(
                    f"dynamodb BatchGetItem {table}: {left} key(s) still unprocessed after "
                    f"{MAX_ROUNDS} calls",
                    code="UnprocessedKeys",
                    type_="DynamoDB",
                )

        _rounds(self._sleep)(call)
        return found


WRITE_BATCH = 25  # BatchWriteItem takes at most 25 requests


def write_items(
    settings: Mapping[str, Any],
    namespace: str,
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Put ``(item_id, metadata)`` rows into ``namespace``'s table with BatchWriteItem, 25 at a
    time, retrying ``UnprocessedItems`` like lookups retry keys; returns the rows written. Not
    atomic across batches: check the rows first. Numbers become DynamoDB numbers; a later row
    with the same id replaces an earlier one."""
    from boto3.dynamodb.types import TypeSerializer

    from aws.clients import client

    typed = DynamoDbSettings.of(settings)
    table = typed.table(namespace)
    layout = typed.layout
    dynamodb = client("dynamodb", region=typed.region, endpoint_url=typed.endpoint_url)
    serializer = TypeSerializer()
    pending: dict[str, Mapping[str, Any]] = {}  # one batch must not name an id twice
    count = 0

    def flush() -> None:
        requests = [
            {"PutRequest": {"Item": _item(serializer, layout, item_id, metadata)}}
            for item_id, metadata in pending.items()
        ]
        _batch_write(dynamodb, table, requests, sleep)
        pending.clear()

    try:
        for item_id, metadata in rows:
            if item_id not in pending and len(pending) == WRITE_BATCH:
                flush()
            pending[item_id] = metadata
            count += 1
        if pending:
            flush()
    finally:
        dynamodb.close()
    return count


def _item(
    serializer: Any, layout: Layout, item_id: str, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    # TypeSerializer refuses floats; JSON numbers go through Decimal unchanged.
    exact = json.loads(json.dumps(metadata), parse_float=Decimal)
    if layout.nested is not None:
        return {layout.key: {"S": item_id}, layout.nested: serializer.serialize(exact)}
    attributes = {name: serializer.serialize(v) for name, v in exact.items() if name != layout.key}
    return {layout.key: {"S": item_id}, **attributes}


def _batch_write(
    dynamodb: Any, table: str, requests: list[dict[str, Any]], sleep: Callable[[float], None]
) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from aws.errors import translate

    request: dict[str, Any] = {table: requests}

    def call() -> None:
        nonlocal request
        try:
            answer = dynamodb.batch_write_item(RequestItems=request)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise translate(exc, f"dynamodb BatchWriteItem {table}") from exc
        request = answer.get("UnprocessedItems") or {}
        if request.get(table):
            raise _Unprocessed(
                f"dynamodb BatchWriteItem {table}: {len(request[table])} item(s) still "
                f"unprocessed after {MAX_ROUNDS} calls",
                code="UnprocessedItems",
                type_="DynamoDB",
            )

    _rounds(sleep)(call)
