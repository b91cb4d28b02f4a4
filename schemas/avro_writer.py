"""Avro binary encoders compiled from a parsed schema: one closure per schema node.

fastavro's ``schemaless_writer`` interprets the schema on every call and picks a union branch
by validating the datum against each branch; for a one-event interaction record that is a
large share of the write path's CPU. ``compile_writer`` walks the schema once instead.

Contract:

- For every record that fits the schema, the bytes are exactly fastavro's
  (``tests/schemas/test_avro_writer.py`` checks this against it).
- What it compiles: null, boolean, int, long, float, double, bytes, string, fixed, enum, array,
  map, records (a field missing from the datum takes its default, as in fastavro), and unions
  of ``null`` with one other type (``None`` selects the null branch). For anything else
  (logical types, named-type references, wider unions) it returns None and the caller keeps
  using fastavro.
- A datum that does not fit raises ``ValueError``, ``TypeError``, ``KeyError`` or
  ``AttributeError``; unlike fastavro it never coerces (no float for a long, no string for
  a float).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

Write = Callable[[bytearray, Any], None]

_LONG_RANGE = (-(1 << 63), 1 << 63)
_INT_RANGE = (-(1 << 31), 1 << 31)
_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


class Unsupported(Exception):
    """The schema uses something ``compile_writer`` does not compile."""


def compile_writer(schema: Any, header: bytes = b"") -> Callable[[Any], bytes] | None:
    """An encoder for a schema parsed by ``fastavro.parse_schema``, or None (see above);
    its output starts with ``header``."""
    try:
        write = _node(schema)
    except Unsupported:
        return None

    def encode(datum: Any) -> bytes:
        out = bytearray(header)
        write(out, datum)
        return bytes(out)

    return encode


def _varint(out: bytearray, value: int, bounds: tuple[int, int]) -> None:
    if not bounds[0] <= value < bounds[1]:
        raise ValueError(f"{value} is out of range")
    n = (value << 1) ^ (value >> 63)  # zig-zag
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _integer(bounds: tuple[int, int]) -> Write:
    def write(out: bytearray, value: Any) -> None:
        if not isinstance(value, int):
            raise TypeError(f"expected an integer, not {type(value).__name__}")
        _varint(out, value, bounds)

    return write


def _null(out: bytearray, value: Any) -> None:
    if value is not None:
        raise TypeError(f"expected null, not {type(value).__name__}")


def _boolean(out: bytearray, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, not {type(value).__name__}")
    out.append(1 if value else 0)


def _float(out: bytearray, value: Any) -> None:
    try:
        out += _pack_float(value)
    except (struct.error, OverflowError) as exc:  # not a number, or beyond float32
        raise ValueError(f"{value!r} is not a float: {exc}") from None


def _double(out: bytearray, value: Any) -> None:
    try:
        out += _pack_double(value)
    except struct.error as exc:
        raise ValueError(f"{value!r} is not a double: {exc}") from None


def _bytes(out: bytearray, value: Any) -> None:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"expected bytes, not {type(value).__name__}")
    _varint(out, len(value), _LONG_RANGE)
    out += value


def _string(out: bytearray, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    data = value.encode()
    _varint(out, len(data), _LONG_RANGE)
    out += data


_PRIMITIVES: Mapping[str, Write] = {
    "null": _null,
    "boolean": _boolean,
    "int": _integer(_INT_RANGE),
    "long": _integer(_LONG_RANGE),
    "float": _float,
    "double": _double,
    "bytes": _bytes,
    "string": _string,
}


def _node(schema: Any) -> Write:
    if isinstance(schema, str):
        primitive = _PRIMITIVES.get(schema)
        if primitive is None:  # a reference to a named type defined elsewhere
            raise Unsupported(schema)
        return primitive
    if isinstance(schema, list):
        return _union(schema)
    if "logicalType" in schema:
        raise Unsupported(schema["logicalType"])
    kind = schema["type"]
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "fixed":
        return _fixed(schema["size"])
    if kind == "enum":
        return _enum(schema["symbols"])
    if kind == "array":
        return _array(_node(schema["items"]))
    if kind == "map":
        return _map(_node(schema["values"]))
    if kind in ("record", "error"):
        return _record(schema["fields"])
    raise Unsupported(kind)


def _union(branches: list[Any]) -> Write:
    if len(branches) != 2 or "null" not in branches:
        raise Unsupported("a union other than null and one type")
    null_index = branches.index("null")
    other_index = 1 - null_index
    other = _node(branches[other_index])

    def write(out: bytearray, value: Any) -> None:
        if value is None:
            out.append(null_index * 2)  # the zig-zag varint of the branch index
        else:
            out.append(other_index * 2)
            other(out, value)

    return write


def _fixed(size: int) -> Write:
    def write(out: bytearray, value: Any) -> None:
        if not isinstance(value, bytes | bytearray) or len(value) != size:
            raise ValueError(f"expected {size} bytes")
        out += value

    return write


def _enum(symbols: list[str]) -> Write:
    index = {symbol: i for i, symbol in enumerate(symbols)}

    def write(out: bytearray, value: Any) -> None:
        _varint(out, index[value], _INT_RANGE)  # KeyError for an unknown symbol

    return write


def _array(item: Write) -> Write:
    def write(out: bytearray, value: Any) -> None:
        if type(value) is not list and isinstance(value, str | bytes | Mapping):
            raise TypeError(f"expected an array, not {type(value).__name__}")
        if value:
            _varint(out, len(value), _LONG_RANGE)
            for element in value:
                item(out, element)
        out.append(0)

    return write


def _map(values: Write) -> Write:
    def write(out: bytearray, value: Any) -> None:
        if value:
            _varint(out, len(value), _LONG_RANGE)
            for key, element in value.items():
                _string(out, key)
                values(out, element)
        out.append(0)

    return write


def _record(fields: list[Mapping[str, Any]]) -> Write:
    compiled: list[tuple[str, Write, Any, bool]] = []
    for field in fields:
        field_type = field["type"]
        # fastavro's rule: a missing field without a default is an error unless null is allowed.
        optional = "default" in field or (isinstance(field_type, list) and "null" in field_type)
        compiled.append((field["name"], _node(field_type), field.get("default"), optional))

    def write(out: bytearray, value: Any) -> None:
        if type(value) is not dict and not isinstance(value, Mapping):
            raise TypeError(f"expected a record (a mapping), not {type(value).__name__}")
        for name, writer, default, optional in compiled:
            if name in value:
                writer(out, value[name])
            elif optional:
                writer(out, default)
            else:
                raise ValueError(f"no value and no default for {name}")

    return write
