"""Experiment counters: exposures and conversions per variation, each event counted once.

What is counted:

* exposures per ``(namespace, recommender, feature, variation)``;
* conversions and the sum of their values per ``(namespace, recommender, feature, variation,
  metric)`` (a conversion sent without a value adds nothing to the sum).

Delivery is at least once, so every event carries an id and a store counts an id once only:
an exposure is identified by its record id (hex), a conversion by ``"<record id hex>:<index>"``.
A redelivered or replayed event finds its id already seen and adds nothing; the check and the
increment commit together or not at all.

Two stores, chosen by the config root's ``experimentStore`` (``build_store``):

``sqlite`` (the default): ``<dataDir>/experiments.db``. One transaction per batch inserts each
id into ``seen`` with ``INSERT OR IGNORE`` and increments the counters only when the row was
inserted.

``dynamodb``: one table ``{"type": "dynamodb", "tableName", "endpointUrl"?, "region"?}`` whose
key is ``pk`` (string, partition) + ``sk`` (string, sort); ``table_spec`` gives the definition.
Single-table design, three kinds of item::

    pk                      sk                                           attributes
    counts#<namespace>      exposures#<recommender>#<feature>#<variation>  exposures
    counts#<namespace>      conversions#<rec>#<feature>#<variation>#<metric>  conversions, valueSum
    event#<event id>        event                                        (marker, no attributes)

(Counter items also carry their names as attributes; no name is ever parsed from a key.)
Events are written in transactions (``TransactWriteItems``) of at most 50 events: one
conditional ``Put`` of each event's marker (``attribute_not_exists(pk)``) plus one ``Update``
with ``ADD`` per counter item touched, the deltas of the transaction's events summed. When a
marker already exists the transaction is cancelled with ``ConditionalCheckFailed`` for that
item; those events are dropped and the rest written again, so a redelivered event adds nothing.
``read(namespace)`` queries one ``counts#`` partition; ``read()`` scans the table (markers
included), which is fine for a report and no more. Markers are kept forever, like SQLite's
``seen`` table: enabling a TTL on them would bound the table at the price of counting twice an
event redelivered or replayed after its marker expired.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from schemas.config import Config
from schemas.errors import ConfigError, Unavailable
from schemas.registry import Registry

ExposureKey = tuple[str, str, str, str]  # namespace, recommender, feature, variation
ConversionKey = tuple[str, str, str, str, str]  # ... and metric

MAX_EVENTS_PER_TRANSACTION = 50  # a marker and a counter each: TransactWriteItems takes 100


@dataclass(frozen=True, slots=True)
class Count:
    """One event to count: an exposure (``metric`` None) or a conversion of ``metric``."""

    event_id: str
    namespace: str
    recommender: str
    feature: str
    variation: str
    metric: str | None = None
    value: float | None = None

    @property
    def exposure_key(self) -> ExposureKey:
        return (self.namespace, self.recommender, self.feature, self.variation)


@dataclass(frozen=True, slots=True)
class Conversions:
    count: int
    value_sum: float


@dataclass(frozen=True)
class Counters:
    """Everything a store has counted (for one namespace, or all)."""

    exposures: Mapping[ExposureKey, int] = field(default_factory=dict)
    conversions: Mapping[ConversionKey, Conversions] = field(default_factory=dict)


class ExperimentStore(Protocol):
    """Counts events idempotently by event id.

    ``open`` before ``add``; ``add`` counts every event of the batch whose id it has not
    seen, returns how many that were, and raises a ``P13nError`` when the store failed (some
    events may then be counted already: adding the same batch again is always safe).
    ``read`` may be called without ``open`` (a report in another process) and never creates
    anything.
    """

    def open(self) -> None: ...

    def add(self, events: Sequence[Count]) -> int: ...

    def read(self, namespace: str | None = None) -> Counters: ...

    def close(self) -> None: ...


# ``experimentStore.type`` → the store class; each has ``from_config(config)``.
STORES: Registry[Any] = Registry(
    {
        "sqlite": "consumers.experiment_store:SqliteExperimentStore",
        "dynamodb": "consumers.experiment_store:DynamoExperimentStore",
    },
    unknown="unknown experimentStore type '{name}'",
)


def build_store(config: Config) -> ExperimentStore:
    """The store the config's ``experimentStore`` names; nothing is opened yet."""
    kind = config.experiment_store.get("type", "sqlite")
    store: ExperimentStore = STORES.lookup(kind).from_config(config)
    return store


# -- SQLite ---------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exposures (
    namespace TEXT NOT NULL,
    recommender TEXT NOT NULL,
    feature TEXT NOT NULL,
    variation TEXT NOT NULL,
    exposures INTEGER NOT NULL,
    PRIMARY KEY (namespace, recommender, feature, variation)
);
CREATE TABLE IF NOT EXISTS conversions (
    namespace TEXT NOT NULL,
    recommender TEXT NOT NULL,
    feature TEXT NOT NULL,
    variation TEXT NOT NULL,
    metric TEXT NOT NULL,
    conversions INTEGER NOT NULL,
    value_sum REAL NOT NULL,
    PRIMARY KEY (namespace, recommender, feature, variation, metric)
);
"""


class SqliteExperimentStore:
    @classmethod
    def from_config(cls, config: Config) -> SqliteExperimentStore:
        return cls(os.path.join(config.data_dir, "experiments.db"))

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        from streams.sqlite import connect

        self._conn = connect(self.path, SCHEMA)

    def add(self, events: Sequence[Count]) -> int:
        conn = self._conn
        if conn is None:
            raise Unavailable("experiment store is not open")
        added = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for event in events:
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO seen (event_id) VALUES (?)", (event.event_id,)
                ).rowcount
                if inserted != 1:
                    continue
                added += 1
                if event.metric is None:
                    conn.execute(
                        "INSERT INTO exposures VALUES (?, ?, ?, ?, 1) ON CONFLICT DO UPDATE"
                        " SET exposures = exposures + 1",
                        event.exposure_key,
                    )
                else:
                    conn.execute(
                        "INSERT INTO conversions VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT DO"
                        " UPDATE SET conversions = conversions + 1,"
                        " value_sum = value_sum + excluded.value_sum",
                        (*event.exposure_key, event.metric, event.value or 0.0),
                    )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise Unavailable(f"experiment store write failed: {exc}") from exc
        return added

    def read(self, namespace: str | None = None) -> Counters:
        if self._conn is None and not os.path.exists(self.path):
            return Counters()
        conn = self._conn
        if conn is None:
            from streams.sqlite import connect

            conn = connect(self.path)
        where, args = ("WHERE namespace = ?", (namespace,)) if namespace else ("", ())
        try:
            exposures = {
                (ns, rec, feature, variation): int(count)
                for ns, rec, feature, variation, count in conn.execute(
                    "SELECT namespace, recommender, feature, variation, exposures"
                    f" FROM exposures {where}",
                    args,
                )
            }
            conversions = {
                (ns, rec, feature, variation, metric): Conversions(int(count), float(total))
                for ns, rec, feature, variation, metric, count, total in conn.execute(
                    "SELECT namespace, recommender, feature, variation, metric, conversions,"
                    f" value_sum FROM conversions {where}",
                    args,
                )
            }
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # created but never written to
                return Counters()
            raise Unavailable(f"experiment store read failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise Unavailable(f"experiment store read failed: {exc}") from exc
        finally:
            if conn is not self._conn:
                conn.close()
        return Counters(exposures, conversions)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- DynamoDB -------------------------------------------------------------------------------


def table_spec(table_name: str) -> dict[str, Any]:
    """``CreateTable`` arguments for the store's table (on-demand capacity)."""
    return {
        "TableName": table_name,
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _number(value: float | int) -> dict[str, str]:
    return {"N": str(Decimal(repr(value)))}


def _counter_key(event: Count) -> tuple[str, str]:
    names = [event.recommender, event.feature, event.variation]
    if event.metric is None:
        return f"counts#{event.namespace}", "#".join(["exposures", *names])
    return f"counts#{event.namespace}", "#".join(["conversions", *names, event.metric])


class DynamoExperimentStore:
    @dataclass(frozen=True)
    class Settings:
        """The config's ``experimentStore`` object of type dynamodb."""

        table_name: str
        region: str | None = None
        endpoint_url: str | None = None

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> DynamoExperimentStore.Settings:
            if not options.get("tableName"):
                raise ConfigError(f"{where} of type dynamodb needs a tableName")
            return cls(options["tableName"], options.get("region"), options.get("endpointUrl"))

    @classmethod
    def from_config(cls, config: Config) -> DynamoExperimentStore:
        settings = cls.Settings.parse(config.experiment_store, "experimentStore")
        return cls(settings.table_name, region=settings.region, endpoint_url=settings.endpoint_url)

    def __init__(
        self, table_name: str, *, region: str | None = None, endpoint_url: str | None = None
    ) -> None:
        self.table_name = table_name
        self.region = region
        self.endpoint_url = endpoint_url
        self._client: Any = None

    def open(self) -> None:
        from aws.clients import client

        self._client = client("dynamodb", region=self.region, endpoint_url=self.endpoint_url)

    def add(self, events: Sequence[Count]) -> int:
        if self._client is None:
            raise Unavailable("experiment store is not open")
        unique = list({event.event_id: event for event in events}.values())
        added = 0
        for start in range(0, len(unique), MAX_EVENTS_PER_TRANSACTION):
            added += self._write(unique[start : start + MAX_EVENTS_PER_TRANSACTION])
        return added

    def _write(self, events: list[Count]) -> int:
        """One transaction; events whose marker exists are dropped and the rest sent again."""
        from botocore.exceptions import ClientError

        from aws.errors import translate

        while events:
            try:
                self._client.transact_write_items(TransactItems=self._items(events))
            except ClientError as exc:
                error = exc.response.get("Error", {})
                if error.get("Code") != "TransactionCanceledException":
                    raise translate(exc, "dynamodb TransactWriteItems") from exc
                reasons = exc.response.get("CancellationReasons") or []
                codes = [str(reason.get("Code") or "None") for reason in reasons]
                markers = codes[: len(events)]  # the markers come first, in event order
                seen = {i for i, code in enumerate(markers) if code == "ConditionalCheckFailed"}
                others = sorted({c for c in codes if c not in ("None", "ConditionalCheckFailed")})
                if others or not seen:
                    # e.g. TransactionConflict: another writer touched a counter just now
                    reason = ", ".join(others) or "no reason given"
                    raise Unavailable(
                        f"dynamodb TransactWriteItems cancelled: {reason}",
                        code="TransactionCanceled",
                    ) from exc
                events = [event for i, event in enumerate(events) if i not in seen]
            except Exception as exc:
                raise translate(exc, "dynamodb TransactWriteItems") from exc
            else:
                return len(events)
        return 0

    def _items(self, events: list[Count]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": {"pk": {"S": f"event#{event.event_id}"}, "sk": {"S": "event"}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            for event in events
        ]
        totals: dict[tuple[str, str], tuple[Count, int, float]] = {}
        for event in events:
            key = _counter_key(event)
            _, count, value = totals.get(key, (event, 0, 0.0))
            totals[key] = (event, count + 1, value + (event.value or 0.0))
        for (pk, sk), (event, count, value) in totals.items():
            names = {
                "#ns": "namespace",
                "#rec": "recommender",
                "#ft": "feature",
                "#var": "variation",
            }
            values = {
                ":ns": {"S": event.namespace},
                ":rec": {"S": event.recommender},
                ":ft": {"S": event.feature},
                ":var": {"S": event.variation},
                ":n": _number(count),
            }
            update = "SET #ns = :ns, #rec = :rec, #ft = :ft, #var = :var"
            if event.metric is None:
                names["#n"] = "exposures"
                update += " ADD #n :n"
            else:
                names.update({"#m": "metric", "#n": "conversions", "#v": "valueSum"})
                values.update({":m": {"S": event.metric}, ":v": _number(value)})
                update += ", #m = :m ADD #n :n, #v :v"
            items.append(
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
                        "UpdateExpression": update,
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                }
            )
        return items

    def read(self, namespace: str | None = None) -> Counters:
        from aws.errors import translate

        if self._client is None:
            self.open()
        if namespace:
            call = self._client.query
            args: dict[str, Any] = {
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": {"S": f"counts#{namespace}"}},
                "ConsistentRead": True,
            }
        else:
            call = self._client.scan
            args = {
                "FilterExpression": "begins_with(pk, :prefix)",
                "ExpressionAttributeValues": {":prefix": {"S": "counts#"}},
                "ConsistentRead": True,
            }
        exposures: dict[ExposureKey, int] = {}
        conversions: dict[ConversionKey, Conversions] = {}
        start: dict[str, Any] | None = None
        while True:
            try:
                page = call(
                    TableName=self.table_name,
                    **args,
                    **({"ExclusiveStartKey": start} if start else {}),
                )
            except Exception as exc:
                raise translate(exc, "dynamodb read of experiment counters") from exc
            for item in page.get("Items", []):
                key = (
                    item["namespace"]["S"],
                    item["recommender"]["S"],
                    item["feature"]["S"],
                    item["variation"]["S"],
                )
                if "metric" in item:
                    conversions[(*key, item["metric"]["S"])] = Conversions(
                        int(item["conversions"]["N"]), float(item["valueSum"]["N"])
                    )
                else:
                    exposures[key] = int(item["exposures"]["N"])
            start = page.get("LastEvaluatedKey")
            if not start:
                return Counters(exposures, conversions)

    def close(self) -> None:
        self._client = None
