"""Avro single-object encoding of stream records.

Every record on the stream is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of
the writer schema's canonical form + the Avro binary body. A reader looks the writer schema up
by fingerprint and resolves it against the newest schema it knows of the same full name, so a
reader with a newer schema reads records written with an older one (fields added with
defaults, fields removed), and an older reader fails loudly on a schema it has never seen.

Writing uses the encoder ``schemas.avro_writer`` compiles for a schema (the same bytes as
fastavro, for a fraction of the CPU on the events path); fastavro writes any schema it cannot
compile, and reads everything.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.avro_writer import compile_writer
from schemas.errors import RecordError

MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8

INTERACTION = "p13n.records.Interaction"
EXPOSURE = "p13n.records.Exposure"


@dataclass(frozen=True, slots=True)
class _Known:
    name: str
    parsed: Any
    fingerprint: bytes
    # The schema compiled for writing (None: fastavro writes it), header included.
    write: Callable[[Any], bytes] | None


class Codec:
    """Encodes with the newest schema of each record name; decodes any known version.

    ``schemas`` are parsed Avro schemas (``*.avsc`` documents as dicts), oldest first within a
    name: the last one of each full name is the one used to write and to read into.
    """

    def __init__(self, schemas: Iterable[Mapping[str, Any]]) -> None:
        by_fingerprint: dict[bytes, _Known] = {}
        newest: dict[str, _Known] = {}
        for schema in schemas:
            parsed: dict[str, Any] = parse_schema(dict(schema), named_schemas={})  # type: ignore[assignment]
            name = parsed["name"]
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            known = _Known(name, parsed, fp, compile_writer(parsed, MARKER + fp))
            by_fingerprint[fp] = known
            newest[name] = known
        self._by_fingerprint = by_fingerprint
        self._newest = newest

    @classmethod
    def packaged(cls) -> Codec:
        """The schemas shipped in ``schemas/avro`` (``<kind>.v<N>.avsc``), oldest first."""
        folder = resources.files("schemas") / "avro"
        files = sorted(
            (f for f in folder.iterdir() if f.name.endswith(".avsc")),
            key=lambda f: (f.name.split(".")[0], int(f.name.split(".")[1].lstrip("v"))),
        )
        return cls(json.loads(f.read_text("utf-8")) for f in files)

    def fingerprint(self, name: str) -> bytes:
        return self._newest[name].fingerprint

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        known = self._newest[name]
        if known.write is not None:
            try:
                return known.write(record)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise RecordError(f"record does not fit {name}: {exc}") from exc
        out = io.BytesIO()
        out.write(MARKER)
        out.write(known.fingerprint)
        try:
            schemaless_writer(out, known.parsed, record, disable_tuple_notation=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RecordError(f"record does not fit {name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Return ``(record name, fields)``; ``RecordError`` for anything not ours."""
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise RecordError("not an Avro single-object encoded record", code="NotAvro")
        writer = self._by_fingerprint.get(data[2:HEADER_SIZE])
        if writer is None:
            raise RecordError(
                f"unknown writer schema fingerprint {data[2:HEADER_SIZE].hex()}",
                code="UnknownSchema",
            )
        reader = self._newest[writer.name]
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro raises assorted types on corrupt bodies
            raise RecordError(f"corrupt {writer.name} record: {exc}", code="CorruptRecord") from exc
        if body.tell() != len(data):
            raise RecordError(f"trailing bytes after {writer.name} record", code="CorruptRecord")
        if not isinstance(record, dict):
            raise RecordError(f"{writer.name} record is not a record", code="CorruptRecord")
        return writer.name, record
