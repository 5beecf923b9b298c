"""docs/schemas/README.md, generated from the JSON Schemas: what each file is, field by field.

Generated rather than written so the page cannot drift from the models: the descriptions in the models are
the only text, and a test regenerates the page and compares it byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Schema


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, ``|`` escaped, and a ``<`` that opens a tag outside
    code spans escaped (``<source>`` would be read as an HTML tag and vanish)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", parts[i])
    return "`".join(parts)


def _refs(node: Any) -> list[str]:
    """The $defs a schema fragment names, in order of first mention."""
    if isinstance(node, Mapping):
        found = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        for key, value in node.items():
            if key != "$defs":
                found += _refs(value)
        return found
    if isinstance(node, list):
        return [name for item in node for name in _refs(item)]
    return []


def defs_in_order(schema: Mapping[str, Any]) -> list[str]:
    """Every $def, depth first in order of first mention from the top (so writer order, not alphabetical)."""
    defs = schema.get("$defs", {})
    order: list[str] = []

    def visit(names: list[str]) -> None:
        for name in names:
            if name not in order:
                order.append(name)
                visit(_refs(defs[name]))

    visit(_refs(schema))
    return order + [name for name in defs if name not in order]


def type_text(schema: Mapping[str, Any]) -> str:
    """A JSON Schema fragment in a few words: ``integer >= 0``, ``array of Region``, ``string or null``."""
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(type_text(s) for s in schema[key])
    if "const" in schema:
        return f"`{json.dumps(schema['const'], ensure_ascii=False)}`"
    if "enum" in schema:
        return " | ".join(f"`{json.dumps(v, ensure_ascii=False)}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        text = f"array of {type_text(schema.get('items', {}))}"
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        if lo is not None and lo == hi:
            text += f" ({lo} items)"
        elif lo or hi is not None:
            text += f" ({lo or 0} to {'any' if hi is None else hi} items)"
        return text
    if kind == "object":
        values = schema.get("additionalProperties")
        patterns = schema.get("patternProperties")
        if patterns:
            ((pattern, inner),) = patterns.items()
            return f"object: key matching `{pattern}` -> {type_text(inner)}"
        if isinstance(values, Mapping):
            names = schema.get("propertyNames")
            key = f"key {type_text(names)}" if names else "key"
            return f"object: {key} -> {type_text(values)}"
        return "object"
    if kind in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None and hi is not None:
            return f"{kind} in [{lo}, {hi}]"
        if lo is not None:
            return f"{kind} >= {lo}"
        return kind if hi is None else f"{kind} <= {hi}"
    if kind == "string" and "pattern" in schema:
        return f"string matching `{schema['pattern']}`"
    return str(kind) if kind else "any"


def _table(schema: Mapping[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = ["| key | type | required | meaning |", "|---|---|---|---|"]
    for key, prop in schema.get("properties", {}).items():
        needed = "yes" if key in required else "no"
        if key not in required and "default" in prop:
            needed += f" (default `{json.dumps(prop['default'], ensure_ascii=False)}`)"
        meaning = _cell(prop.get("description", ""))
        lines.append(f"| `{key}` | {_cell(type_text(prop))} | {needed} | {meaning} |")
    extra = schema.get("additionalProperties")
    lines.append("")
    lines.append("Other keys: " + ("refused." if extra is False else "allowed."))
    return lines


def _section(contract: Schema, schema: Mapping[str, Any]) -> list[str]:
    name = contract.name
    lines = [f"## {name}", "", f"**{contract.files}**. {contract.about}", ""]
    lines += [
        f"Written by {contract.written_by}; read by {contract.read_by}. Format version {contract.version}. "
        f"Schema: [{name}.schema.json]({name}.schema.json), also printed by `qwenvl-roi schema {name}`.",
        "",
    ]
    if "oneOf" in schema:
        kinds = ", ".join(type_text(s) for s in schema["oneOf"])
        lines += [f"Each record is exactly one of: {kinds} (below).", ""]
    else:
        lines += _table(schema) + [""]
    for def_name in defs_in_order(schema):
        sub = schema["$defs"][def_name]
        lines += [f"### {name}: `{def_name}`", ""]
        if sub.get("description"):
            lines += [_cell(sub["description"]), ""]
        lines += _table(sub) + [""]
    return lines


def readme_text(schemas: Mapping[str, Mapping[str, Any]]) -> str:
    """The README of docs/schemas for these JSON Schemas (contract name -> its JSON Schema)."""
    from . import SCHEMAS, WRITE_COMMAND

    lines = [
        "# File formats",
        "",
        f"<!-- generated by `{WRITE_COMMAND}` from the models in qwenvl_roi/schemas/; do not edit -->",
        "",
        "Every file qwenvl-roi writes and reads has one pydantic model in `qwenvl_roi/schemas/`, used by its "
        "writer and its readers, and a JSON Schema (draft 2020-12) generated from it: the files here, or "
        "`qwenvl-roi schema NAME` on stdout. Check a file with any JSON Schema validator, e.g. Python's "
        "`jsonschema` (`Draft202012Validator`); one line of a `.jsonl` file is one record. A JSON Schema "
        "cannot say that a number is finite: the models also refuse `NaN` and `Infinity`, which Python's "
        "`json` reads. Fields are listed in the order the writers build them (metrics.json and "
        "qwenvl_roi_inference.json are written with sorted keys).",
        "",
        "| name | file | format version | written by | read by |",
        "|---|---|---|---|---|",
    ]
    for name in schemas:
        c = SCHEMAS[name]
        lines.append(
            f"| [`{name}`](#{name}) | {_cell(c.files)} | {c.version} | {_cell(c.written_by)} | "
            f"{_cell(c.read_by)} |"
        )
    lines.append("")
    for name, schema in schemas.items():
        lines += _section(SCHEMAS[name], schema)
    return "\n".join(lines).rstrip("\n") + "\n"
