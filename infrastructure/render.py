"""Write the config's JSON Schema into the SAM template's AppConfig validator.

CloudFormation takes a JSON_SCHEMA validator's schema inline, and AppConfig reads inline schemas
as JSON Schema draft 4 in at most 32,768 characters. ``schemas/config_schema.json`` is draft
2020-12 and larger than that with its descriptions, so the template carries its draft-4
projection (``draft4``):

* annotations (``description``, ``title``, ``$comment``, ``examples``) and ``$id`` are dropped;
* ``$defs`` becomes ``definitions`` (and every ``$ref`` with it), ``const`` a one-value
  ``enum``, a numeric ``exclusiveMinimum``/``exclusiveMaximum`` the draft-4 boolean form;
* ``if``/``then``/``else`` becomes the equivalent ``anyOf`` (``(if and then) or (not if and else)``);
* a ``$ref`` with sibling keywords is wrapped in ``allOf`` (draft 4 ignores the siblings);
* ``unevaluatedProperties`` and ``propertyNames`` have no draft-4 form and are dropped, so the
  projection accepts a little more than the schema (unknown keys where ``then`` adds
  properties; badly formed map keys). ``p13n config validate`` and every process loading the
  config still apply the full schema.

Any other keyword draft 4 does not know stops the rendering, so a schema change never weakens
the validator silently.

    .venv/bin/python infrastructure/render.py           # rewrite the template's schema line
    .venv/bin/python infrastructure/render.py --check   # exit 1 when the template is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infrastructure" / "template.yaml"
SCHEMA = ROOT / "schemas" / "config_schema.json"

DRAFT4 = "http://json-schema.org/draft-04/schema#"
MAX_CONTENT = 32768  # AppConfig's limit on a validator's content
MARKER = "# rendered: schemas/config_schema.json"
_LINE = re.compile(r"^(?P<indent>[ \t]*)Content: .*" + re.escape(MARKER) + r"$", re.MULTILINE)

_ANNOTATIONS = {"description", "title", "$comment", "examples", "$id"}
_DROPPED = {"unevaluatedProperties", "propertyNames"}
_SCHEMA_MAPS = {"properties", "patternProperties", "definitions", "$defs", "dependencies"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf"}
_SCHEMA_VALUES = {"not", "additionalProperties", "additionalItems", "items"}
_PLAIN = {
    "$schema",
    "$ref",
    "default",
    "multipleOf",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "enum",
    "const",
    "type",
    "format",
    "if",
    "then",
    "else",
}


class RenderError(Exception):
    """The schema holds something the draft-4 projection cannot carry, or the template has no
    line to write it to."""


def _schema(node: Any, where: str) -> Any:
    if isinstance(node, bool):  # draft 4 has no boolean schemas
        return {} if node else {"not": {}}
    if not isinstance(node, dict):
        raise RenderError(f"{where}: a schema must be an object, not {type(node).__name__}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        at = f"{where}/{key}"
        if key in _ANNOTATIONS or key in _DROPPED or key in {"if", "then", "else"}:
            continue
        if key in _SCHEMA_MAPS:
            name = "definitions" if key == "$defs" else key
            out[name] = {k: _schema(v, f"{at}/{k}") for k, v in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [_schema(v, f"{at}/{i}") for i, v in enumerate(value)]
        elif key in _SCHEMA_VALUES:
            if isinstance(value, list):  # items as a list of schemas
                out[key] = [_schema(v, f"{at}/{i}") for i, v in enumerate(value)]
            elif key == "additionalProperties" and isinstance(value, bool):
                out[key] = value
            else:
                out[key] = _schema(value, at)
        elif key == "$schema":
            out[key] = DRAFT4
        elif key == "$ref":
            out[key] = value.replace("#/$defs/", "#/definitions/")
        elif key == "const":
            out["enum"] = [value]
        elif key in {"exclusiveMinimum", "exclusiveMaximum"} and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if bound in node:
                raise RenderError(f"{at}: both {bound} and a numeric {key}")
            out[bound] = value
            out[key] = True
        elif key == "required" and not value:
            continue  # draft 4 wants at least one name
        elif key in _PLAIN:
            out[key] = value
        else:
            raise RenderError(f"{at}: '{key}' has no draft-4 form; teach render.py about it")
    if "if" in node:
        condition = _schema(node["if"], f"{where}/if")
        then = _schema(node.get("then", {}), f"{where}/then")
        otherwise = _schema(node.get("else", {}), f"{where}/else")
        clause = {
            "anyOf": [{"allOf": [condition, then]}, {"allOf": [{"not": condition}, otherwise]}]
        }
        out.setdefault("allOf", []).append(clause)
    if "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out = {"allOf": [{"$ref": ref}, out]}
    return out


def draft4(schema: dict[str, Any]) -> dict[str, Any]:
    """The draft-4 projection of a draft 2020-12 schema (see the module docstring)."""
    projected: dict[str, Any] = _schema(schema, "#")
    projected["$schema"] = DRAFT4
    return projected


def content(schema: dict[str, Any]) -> str:
    """The validator's content: the projection as compact JSON, within AppConfig's limit."""
    text = json.dumps(draft4(schema), separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_CONTENT:
        raise RenderError(
            f"the schema's projection is {len(text)} characters; AppConfig takes {MAX_CONTENT}"
        )
    return text


def render(template: str, schema: dict[str, Any]) -> str:
    """``template`` with its marked ``Content:`` line holding ``schema``'s projection."""
    found = list(_LINE.finditer(template))
    if len(found) != 1:
        raise RenderError(f"expected one 'Content: ... {MARKER}' line, found {len(found)}")
    quoted = "'" + content(schema).replace("'", "''") + "'"  # a YAML single-quoted scalar
    line = f"{found[0]['indent']}Content: {quoted}  {MARKER}"
    return template[: found[0].start()] + line + template[found[0].end() :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the template is stale")
    args = parser.parse_args(argv)
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    current = TEMPLATE.read_text(encoding="utf-8")
    try:
        wanted = render(current, schema)
    except RenderError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    if wanted == current:
        return 0
    if args.check:
        print(
            f"{TEMPLATE.relative_to(ROOT)} is stale: run infrastructure/render.py", file=sys.stderr
        )
        return 1
    TEMPLATE.write_text(wanted, encoding="utf-8")
    print(f"wrote the config schema into {TEMPLATE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
