"""Checkpoints and shard leases in DynamoDB, for ``p13n consume`` running in several processes.

Table layout (``create_table`` makes it; infrastructure templates declare the same):

* partition key ``group`` (S), sort key ``shardId`` (S), on-demand billing;
* ``sequenceNumber`` (S) and ``subSequence`` (N): the checkpoint, absent until the first save;
* ``owner`` (S), ``leaseExpiresMs`` (N, epoch ms) and ``leaseCounter`` (N, counts acquisitions
  and renewals): the lease, ``owner`` absent when nobody holds it;
* ``updatedMs`` (N): when the item last changed.

Every write is conditional, so the table itself arbitrates between processes: a lease is taken
only when it has no owner, has expired or is already ours, and a checkpoint is written only by
the lease's owner. Expiry compares wall clocks of different hosts, so keep ``lease_seconds``
well above their skew.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aws.clients import client as aws_client
from aws.errors import translate
from schemas.config import Config
from schemas.errors import ConfigError
from streams.base import LeaseLost, Position

_CONDITION_FAILED = "ConditionalCheckFailedException"
_AWS_ERRORS = (ClientError, BotoCoreError)


def create_table(client: Any, name: str) -> None:
    """Create the checkpoint table (on-demand) and wait until it is ACTIVE; an existing table
    is left as it is."""
    try:
        client.create_table(
            TableName=name,
            AttributeDefinitions=[
                {"AttributeName": "group", "AttributeType": "S"},
                {"AttributeName": "shardId", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "group", "KeyType": "HASH"},
                {"AttributeName": "shardId", "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise translate(exc, f"dynamodb CreateTable {name}") from exc
    except BotoCoreError as exc:
        raise translate(exc, f"dynamodb CreateTable {name}") from exc
    try:
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
    except BotoCoreError as exc:  # WaiterError included
        raise translate(exc, f"dynamodb DescribeTable {name}") from exc


def _failed_condition(exc: Exception) -> bool:
    return (
        isinstance(exc, ClientError)
        and exc.response.get("Error", {}).get("Code") == _CONDITION_FAILED
    )


class DynamoCheckpointStore:
    """``LeaseStore`` in one DynamoDB table; ``owner`` names this process in the leases."""

    def __init__(
        self,
        client: Any,
        table: str,
        owner: str,
        lease_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._table = table
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._clock = clock

    @dataclass(frozen=True)
    class Settings:
        """The config's ``checkpoints`` object of type dynamodb."""

        table_name: str
        region: str | None = None
        endpoint_url: str | None = None
        lease_seconds: float = 30.0

        @classmethod
        def parse(cls, options: Mapping[str, Any], where: str) -> DynamoCheckpointStore.Settings:
            table = options.get("tableName")
            if not table:
                raise ConfigError(f"{where} of type dynamodb need a tableName")
            return cls(
                table,
                options.get("region"),
                options.get("endpointUrl"),
                float(options.get("leaseSeconds", 30)),
            )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], owner: str) -> DynamoCheckpointStore:
        """Build from the config's ``checkpoints`` object (``type`` dynamodb)."""
        parsed = cls.Settings.parse(settings, "checkpoints")
        dynamodb = aws_client("dynamodb", region=parsed.region, endpoint_url=parsed.endpoint_url)
        return cls(dynamodb, parsed.table_name, owner, parsed.lease_seconds)

    @classmethod
    def from_config(cls, config: Config, owner: str) -> DynamoCheckpointStore:
        return cls.from_settings(config.checkpoints, owner)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _key(self, group: str, shard_id: str) -> dict[str, Any]:
        return {"group": {"S": group}, "shardId": {"S": shard_id}}

    def _update(self, what: str, group: str, shard_id: str, **kwargs: Any) -> bool:
        """One conditional UpdateItem; False when its condition failed."""
        try:
            self._client.update_item(
                TableName=self._table, Key=self._key(group, shard_id), **kwargs
            )
        except _AWS_ERRORS as exc:
            if _failed_condition(exc):
                return False
            raise translate(exc, f"dynamodb {what} {self._table} {group} {shard_id}") from exc
        return True

    # -- checkpoints --------------------------------------------------------------------------

    def load(self, group: str, shard_id: str) -> Position | None:
        try:
            item = self._client.get_item(
                TableName=self._table, Key=self._key(group, shard_id), ConsistentRead=True
            ).get("Item")
        except _AWS_ERRORS as exc:
            raise translate(exc, f"dynamodb GetItem {self._table} {group} {shard_id}") from exc
        if not item or "sequenceNumber" not in item:
            return None
        return Position(item["sequenceNumber"]["S"], int(item["subSequence"]["N"]))

    def save(self, group: str, shard_id: str, position: Position) -> None:
        saved = self._update(
            "UpdateItem (checkpoint)",
            group,
            shard_id,
            UpdateExpression="SET sequenceNumber = :seq, subSequence = :sub, updatedMs = :now",
            ConditionExpression="#owner = :me",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":seq": {"S": position.sequence_number},
                ":sub": {"N": str(position.sub_sequence)},
                ":now": {"N": str(self._now_ms())},
                ":me": {"S": self.owner},
            },
        )
        if not saved:
            raise LeaseLost(
                f"checkpoint of {group} {shard_id} not saved: {self.owner} lost the lease"
            )

    def close(self) -> None:
        """Nothing to close: the client belongs to whoever built it. Leases stay until
        released or expired."""

    # -- leases -------------------------------------------------------------------------------

    def acquire(self, group: str, shard_id: str) -> bool:
        now = self._now_ms()
        return self._update(
            "UpdateItem (acquire lease)",
            group,
            shard_id,
            UpdateExpression=(
                "SET #owner = :me, leaseExpiresMs = :expires, updatedMs = :now"
                " ADD leaseCounter :one"
            ),
            ConditionExpression=(
                "attribute_not_exists(#owner) OR #owner = :me OR leaseExpiresMs < :now"
            ),
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":me": {"S": self.owner},
                ":now": {"N": str(now)},
                ":expires": {"N": str(now + int(self.lease_seconds * 1000))},
                ":one": {"N": "1"},
            },
        )

    def renew(self, group: str, shard_id: str) -> bool:
        now = self._now_ms()
        return self._update(
            "UpdateItem (renew lease)",
            group,
            shard_id,
            UpdateExpression="SET leaseExpiresMs = :expires, updatedMs = :now ADD leaseCounter :one",
            ConditionExpression="#owner = :me",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":me": {"S": self.owner},
                ":now": {"N": str(now)},
                ":expires": {"N": str(now + int(self.lease_seconds * 1000))},
                ":one": {"N": "1"},
            },
        )

    def release(self, group: str, shard_id: str) -> None:
        self._update(
            "UpdateItem (release lease)",
            group,
            shard_id,
            UpdateExpression="REMOVE #owner, leaseExpiresMs SET updatedMs = :now",
            ConditionExpression="#owner = :me",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={
                ":me": {"S": self.owner},
                ":now": {"N": str(self._now_ms())},
            },
        )

    def lease(self, group: str, shard_id: str) -> tuple[str | None, int, int]:
        """``(owner, expires epoch ms, counter)`` as stored now; for operators and tests."""
        try:
            item = self._client.get_item(
                TableName=self._table, Key=self._key(group, shard_id), ConsistentRead=True
            ).get("Item", {})
        except _AWS_ERRORS as exc:
            raise translate(exc, f"dynamodb GetItem {self._table} {group} {shard_id}") from exc
        owner = item.get("owner", {}).get("S")
        expires = int(item.get("leaseExpiresMs", {}).get("N", 0))
        return owner, expires, int(item.get("leaseCounter", {}).get("N", 0))
