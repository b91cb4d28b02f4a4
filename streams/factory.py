"""Building stream backends and checkpoint stores from the config: the one place their types
are registered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.config import Config
from schemas.errors import ConfigError
from schemas.registry import Registry
from streams.base import CheckpointStore, LoopWriter, StreamReader, StreamWriter


@dataclass(frozen=True)
class Backend:
    writer: Callable[[Config], StreamWriter | LoopWriter]
    reader: Callable[[Config], StreamReader]


def _embedded_writer(config: Config) -> LoopWriter:
    # The service's writer: a process of its own, so commits run beside the event loop
    # (streams.embedded_process says why); streams.embedded.EmbeddedWriter is what it runs.
    from streams.embedded_process import EmbeddedProcessWriter

    stream, producer = config.stream, config.stream.producer
    return EmbeddedProcessWriter(
        config.stream_path(),
        stream.shards,
        stream.retention_hours,
        producer.max_batch_records,
        producer.max_batch_bytes,
    )


def _embedded_reader(config: Config) -> StreamReader:
    from streams.embedded import EmbeddedReader

    return EmbeddedReader(config.stream_path())


def _kinesis_client(config: Config):  # type: ignore[no-untyped-def]
    from aws.clients import client

    # The producer's writer retries failed entries itself; one botocore attempt avoids
    # multiplying the two layers of retries.
    return client(
        "kinesis",
        region=config.stream.region,
        endpoint_url=config.stream.endpoint_url,
        max_attempts=1,
    )


def _kinesis_writer(config: Config) -> StreamWriter:
    from streams.kinesis import KinesisWriter

    name = config.stream.stream_name or ""
    return KinesisWriter(_kinesis_client(config), name, aggregate=config.stream.aggregate)


def _kinesis_reader(config: Config) -> StreamReader:
    from streams.kinesis import KinesisReader

    return KinesisReader(_kinesis_client(config), config.stream.stream_name or "")


BACKENDS: dict[str, Backend] = {
    "embedded": Backend(_embedded_writer, _embedded_reader),
    "kinesis": Backend(_kinesis_writer, _kinesis_reader),
}


def _backend(config: Config) -> Backend:
    backend = BACKENDS.get(config.stream.type)
    if backend is None:
        raise ConfigError(f"unknown stream type '{config.stream.type}'")
    return backend


def build_writer(config: Config) -> StreamWriter | LoopWriter:
    return _backend(config).writer(config)


def build_reader(config: Config) -> StreamReader:
    return _backend(config).reader(config)


# ``checkpoints.type`` → the store class; each has ``from_config(config, owner)``.
CHECKPOINTS: Registry[type[CheckpointStore]] = Registry(
    {
        "sqlite": "streams.checkpoints:SqliteCheckpointStore",
        "dynamodb": "streams.dynamodb_checkpoints:DynamoCheckpointStore",
    },
    unknown="unknown checkpoints type '{name}'",
)


def build_checkpoints(config: Config, owner: str) -> CheckpointStore:
    """The store ``config.checkpoints`` names: SQLite in the data dir (one consuming process),
    or DynamoDB, whose shard leases let several processes share the stream (``owner`` names
    this one in them)."""
    store = CHECKPOINTS.lookup(config.checkpoints.get("type", "sqlite"))
    built: CheckpointStore = store.from_config(config, owner)  # type: ignore[attr-defined]
    return built
