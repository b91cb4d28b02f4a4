"""Avro binary encoders compiled from a parsed schema into one Python function per schema.

fastavro's ``schemaless_writer`` interprets the schema on every call and picks a union branch
by validating the datum against each branch; for a one-event interaction record that is a
large share of the write path's CPU. ``compile_writer`` walks the schema once and generates the
source of a single function that writes it: records unrolled field by field, strings, longs,
enums and unions inline, variable-length integers as a loop in place. There is no call per
field, which in the running service costs more than the writing itself.

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
- The generated source is built only from the schema's structure: names and defaults reach it
  as constants bound by name, never as text, so no schema content is ever executed.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Mapping
from typing import Any

_LONG_RANGE = (-(1 << 63), 1 << 63)
_INT_RANGE = (-(1 << 31), 1 << 31)
_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


class Unsupported(Exception):
    """The schema uses something ``compile_writer`` does not compile."""


def compile_writer(schema: Any, header: bytes = b"") -> Callable[[Any], bytes] | None:
    """An encoder for a schema parsed by ``fastavro.parse_schema``, or None (see above);
    its output starts with ``header``."""
    generator = _Generator()
    generator.line(1, f"out = bytearray({generator.constant(header)})")
    try:
        generator.node(schema, "datum", 1)
    except Unsupported:
        return None
    generator.line(1, "return bytes(out)")
    source = "def encode(datum):\n" + "\n".join(generator.lines) + "\n"
    scope: dict[str, Any] = {**_HELPERS, **generator.constants}
    # The source holds no schema text (see the contract), only structure and generated names.
    exec(compile(source, "<avro writer>", "exec"), scope)
    return scope["encode"]  # type: ignore[no-any-return]


def _varint(out: bytearray, value: int, bounds: tuple[int, int]) -> None:
    if not bounds[0] <= value < bounds[1]:
        raise ValueError(f"{value} is out of range")
    n = (value << 1) ^ (value >> 63)  # zig-zag
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


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


def _type_error(expected: str, value: Any) -> TypeError:
    return TypeError(f"expected {expected}, not {type(value).__name__}")


_HELPERS: dict[str, Any] = {
    "_boolean": _boolean,
    "_float": _float,
    "_double": _double,
    "_bytes": _bytes,
    "_type_error": _type_error,
    "Mapping": Mapping,
    # isinstance's tuples built once: a ``bytes | bytearray`` in the source is a new union
    # object on every call.
    "_BYTES_TYPES": (bytes, bytearray),
    "_NOT_ARRAYS": (str, bytes, Mapping),
}
_CALLED = {"boolean": "_boolean", "float": "_float", "double": "_double", "bytes": "_bytes"}


class _Generator:
    """Source lines of ``encode(datum)``; each ``node`` call writes the value held in one
    variable. ``n`` is the scratch variable of every variable-length integer: each is written
    completely before the next begins."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._names = itertools.count()

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def name(self, stem: str) -> str:
        return f"{stem}{next(self._names)}"

    def constant(self, value: Any) -> str:
        name = self.name("_k")
        self.constants[name] = value
        return name

    def varint(self, indent: int) -> None:
        """Write ``n`` (already zig-zagged, so never negative)."""
        self.line(indent, "while n > 0x7F:")
        self.line(indent + 1, "out.append((n & 0x7F) | 0x80)")
        self.line(indent + 1, "n >>= 7")
        self.line(indent, "out.append(n)")

    def node(self, schema: Any, var: str, indent: int) -> None:
        if isinstance(schema, list):
            self.union(schema, var, indent)
            return
        if isinstance(schema, dict):
            if "logicalType" in schema:
                raise Unsupported(schema["logicalType"])
            kind = schema["type"]
        else:
            kind = schema
        if kind == "null":
            self.line(indent, f"if {var} is not None:")
            self.line(indent + 1, f"raise _type_error('null', {var})")
        elif kind in ("int", "long"):
            low, high = _INT_RANGE if kind == "int" else _LONG_RANGE
            self.line(indent, f"if not isinstance({var}, int):")
            self.line(indent + 1, f"raise _type_error('an integer', {var})")
            self.line(indent, f"if not {low} <= {var} < {high}:")
            self.line(indent + 1, f"raise ValueError(f'{{{var}}} is out of range')")
            self.line(indent, f"n = ({var} << 1) ^ ({var} >> 63)")
            self.varint(indent)
        elif kind == "string":
            self.string(var, indent)
        elif kind in _CALLED:
            self.line(indent, f"{_CALLED[kind]}(out, {var})")
        elif not isinstance(schema, dict):  # a reference to a named type defined elsewhere
            raise Unsupported(kind)
        elif kind == "fixed":
            self.line(
                indent,
                f"if not isinstance({var}, _BYTES_TYPES) or len({var}) != {int(schema['size'])}:",
            )
            self.line(indent + 1, f"raise ValueError('expected {int(schema['size'])} bytes')")
            self.line(indent, f"out += {var}")
        elif kind == "enum":
            index = self.constant({symbol: i for i, symbol in enumerate(schema["symbols"])})
            self.line(indent, f"n = {index}[{var}] << 1")  # KeyError for an unknown symbol
            self.varint(indent)
        elif kind == "array":
            self.array(schema["items"], var, indent)
        elif kind == "map":
            self.map(schema["values"], var, indent)
        elif kind in ("record", "error"):
            self.record(schema["fields"], var, indent)
        else:
            raise Unsupported(kind)

    def string(self, var: str, indent: int) -> None:
        data = self.name("d")
        self.line(indent, f"if not isinstance({var}, str):")
        self.line(indent + 1, f"raise _type_error('a string', {var})")
        self.line(indent, f"{data} = {var}.encode()")
        self.line(indent, f"n = len({data}) << 1")
        self.varint(indent)
        self.line(indent, f"out += {data}")

    def union(self, branches: list[Any], var: str, indent: int) -> None:
        if len(branches) != 2 or "null" not in branches:
            raise Unsupported("a union other than null and one type")
        null_index = branches.index("null")
        self.line(indent, f"if {var} is None:")
        self.line(indent + 1, f"out.append({null_index * 2})")  # the branch index, zig-zagged
        self.line(indent, "else:")
        self.line(indent + 1, f"out.append({(1 - null_index) * 2})")
        self.node(branches[1 - null_index], var, indent + 1)

    def array(self, items: Any, var: str, indent: int) -> None:
        element = self.name("e")
        self.line(indent, f"if type({var}) is not list and isinstance({var}, _NOT_ARRAYS):")
        self.line(indent + 1, f"raise _type_error('an array', {var})")
        self.line(indent, f"if {var}:")
        self.line(indent + 1, f"n = len({var}) << 1")
        self.varint(indent + 1)
        self.line(indent + 1, f"for {element} in {var}:")
        self.node(items, element, indent + 2)
        self.line(indent, "out.append(0)")

    def map(self, values: Any, var: str, indent: int) -> None:
        key, element = self.name("k"), self.name("e")
        self.line(indent, f"if {var}:")
        self.line(indent + 1, f"n = len({var}) << 1")
        self.varint(indent + 1)
        self.line(indent + 1, f"for {key}, {element} in {var}.items():")
        self.string(key, indent + 2)
        self.node(values, element, indent + 2)
        self.line(indent, "out.append(0)")

    def record(self, fields: list[Mapping[str, Any]], var: str, indent: int) -> None:
        self.line(indent, f"if type({var}) is not dict and not isinstance({var}, Mapping):")
        self.line(indent + 1, f"raise _type_error('a record (a mapping)', {var})")
        for field in fields:
            field_type = field["type"]
            # fastavro's rule: a missing field without a default is an error unless null is
            # allowed.
            optional = "default" in field or (isinstance(field_type, list) and "null" in field_type)
            name, value = self.constant(field["name"]), self.name("f")
            self.line(indent, f"if {name} in {var}:")
            self.line(indent + 1, f"{value} = {var}[{name}]")
            self.line(indent, "else:")
            if optional:
                self.line(indent + 1, f"{value} = {self.constant(field.get('default'))}")
            else:
                self.line(indent + 1, f"raise ValueError('no value and no default for ' + {name})")
            self.node(field_type, value, indent)
