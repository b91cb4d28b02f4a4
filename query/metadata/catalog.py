"""Item metadata files read, checked and written into a namespace's store (``p13n items load``).

Input formats, chosen by extension:

- JSON lines (any extension but ``.csv``): one JSON object per line, blank lines skipped. The id
  is the ``id_column`` field, by default the first of ``itemId``, ``id`` present; the other
  fields are the metadata, as written.
- CSV (``.csv``): a header row, then one item per row. The id column is ``id_column``, by
  default the first of ``itemId``, ``ITEM_ID``, ``id`` in the header; the other columns are the
  metadata, as strings.

An id is a non-empty string (JSON numbers are taken as their text) of at most ``MAX_ID`` (256)
characters, as Personalize requires. Every bad row is reported with its line number, and then
nothing is written (``BadInput``). Where the rows go: the ``localdb`` file of the data dir
(``<dataDir>/items.db``, one transaction), or — when the namespace's item metadata is
``dynamodb`` and not ``localdb`` — its DynamoDB table, after a first pass has checked every row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from schemas.config import Config
from schemas.errors import InvalidRequest

JSON_ID_FIELDS = ("itemId", "id")
CSV_ID_COLUMNS = ("itemId", "ITEM_ID", "id")
MAX_ID = 256

Row = tuple[str, Mapping[str, Any]]


class BadInput(InvalidRequest):
    """The input file has bad rows; ``problems`` lists ``(line number, reason)``."""

    def __init__(self, path: str, problems: list[tuple[int, str]]) -> None:
        super().__init__(f"{path}: {len(problems)} bad row(s)", code="BadItems")
        self.problems = problems


@dataclass
class ItemFile:
    """An items file to read. ``rows()`` yields ``(item_id, metadata)`` and, once every row
    has been read, raises ``BadInput`` if any was bad — so a consumer that writes in one
    transaction writes nothing from a bad file. ``on_bytes`` is told how far reading got."""

    path: str
    id_column: str | None = None
    on_bytes: Callable[[int], None] = lambda _: None
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def is_csv(self) -> bool:
        return self.path.lower().endswith(".csv")

    def rows(self) -> Iterator[Row]:
        self.problems = []
        with open(self.path, "rb") as handle:
            lines = self._lines(handle)
            yield from self._csv(lines) if self.is_csv else self._json(lines)
        if self.problems:
            raise BadInput(self.path, self.problems)

    def _lines(self, handle: IO[bytes]) -> Iterator[str]:
        for number, raw in enumerate(handle, start=1):
            self.on_bytes(len(raw))
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                self.problems.append((number, f"not UTF-8: {exc.reason}"))
                yield "\n"  # keep line numbers (and the CSV reader) in step

    def _json(self, lines: Iterator[str]) -> Iterator[Row]:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except json.JSONDecodeError as exc:
                self.problems.append((number, f"not JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(document, dict):
                self.problems.append((number, "not a JSON object"))
                continue
            names = (self.id_column,) if self.id_column else JSON_ID_FIELDS
            key = next((name for name in names if name in document), None)
            row = self._row(number, document, key, names)
            if row is not None:
                yield row

    def _csv(self, lines: Iterator[str]) -> Iterator[Row]:
        reader = csv.reader(lines)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            self.problems.append((1, f"bad CSV header: {exc}"))
            return
        names = (self.id_column,) if self.id_column else CSV_ID_COLUMNS
        key = next((name for name in names if name in header), None)
        if key is None:
            self.problems.append((1, f"no id column: expected one of {', '.join(names)}"))
            return
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self.problems.append((reader.line_num, f"bad CSV: {exc}"))
                continue
            if not values:
                continue
            if len(values) != len(header):
                self.problems.append(
                    (reader.line_num, f"{len(values)} field(s), the header has {len(header)}")
                )
                continue
            row = self._row(reader.line_num, dict(zip(header, values, strict=True)), key, names)
            if row is not None:
                yield row

    def _row(
        self, number: int, document: dict[str, Any], key: str | None, names: tuple[str, ...]
    ) -> Row | None:
        item_id = document.pop(key, None) if key is not None else None
        if isinstance(item_id, int | float) and not isinstance(item_id, bool):
            item_id = str(item_id)
        if not isinstance(item_id, str) or not item_id:
            self.problems.append((number, f"no item id (field {' or '.join(names)})"))
            return None
        if len(item_id) > MAX_ID:
            self.problems.append((number, f"item id longer than {MAX_ID} characters"))
            return None
        return item_id, document


def metadata_types(config: Config, namespace: str) -> dict[str, Mapping[str, Any]]:
    """The effective ``inferenceItemMetadata`` settings used anywhere in ``namespace``, by type
    (the first found of each type)."""
    ns = config.namespace(namespace)
    levels = [ns.inference_item_metadata]
    for by_name in ns.recommenders.values():
        for recommender in by_name.values():
            levels.append(recommender.inference_item_metadata)
            levels.extend(v.inference_item_metadata for v in recommender.variations.values())
    found: dict[str, Mapping[str, Any]] = {}
    for settings in levels:
        if settings is not None:
            found.setdefault(str(settings.get("type")), settings)
    return found


@dataclass(frozen=True)
class Destination:
    """Where ``namespace``'s item metadata is loaded: its DynamoDB table when the namespace uses
    ``dynamodb`` and not ``localdb``, else the data dir's ``items.db``."""

    namespace: str
    data_dir: str
    dynamodb: Mapping[str, Any] | None = None

    @property
    def passes(self) -> int:
        """How many times a load reads the file: DynamoDB has no transaction, so a first pass
        checks every row before the first write."""
        return 2 if self.dynamodb is not None else 1

    def describe(self) -> str:
        if self.dynamodb is not None:
            from query.metadata.dynamodb import table_for

            return f"dynamodb table {table_for(self.dynamodb, self.namespace)}"
        from query.metadata.localdb import default_path

        return default_path(self.data_dir)


def destination(config: Config, namespace: str) -> Destination:
    types = metadata_types(config, namespace)
    dynamodb = types.get("dynamodb") if "localdb" not in types else None
    return Destination(namespace, config.data_dir, dynamodb)


def load(source: ItemFile, into: Destination) -> int:
    """Load every row of ``source`` into ``into``; returns how many items were written. A bad
    row anywhere raises ``BadInput`` with nothing written."""
    if into.dynamodb is not None:
        from query.metadata.dynamodb import write_items

        for _ in source.rows():  # check every row before the first write
            pass
        return write_items(into.dynamodb, into.namespace, source.rows())
    from query.metadata.localdb import default_path, load_items

    return load_items(default_path(into.data_dir), into.namespace, source.rows())
