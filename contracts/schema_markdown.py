"""The contract reference page (`docs/reference/schema.md`), rendered from the JSON Schema that `schema.py` builds.

Generated, never edited: `python -m contracts.schema` writes it beside `schema.json`, and `--check` fails when the
committed page differs, so the documentation cannot drift from the Structs.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["render_markdown"]

Schema = dict[str, Any]


def render_markdown(schema: Schema) -> str:
    """Every op, the envelope, the event, the inventory values and each type's fields, as one Markdown page."""
    defs: dict[str, Schema] = schema["$defs"]
    out = [
        "# Contract reference",
        "",
        "Every message type of the bus, generated from `contracts/schema.json` (contract version "
        f"**{schema['version']}**): each op's request and result, the reply envelope, the event, the inventory "
        "values, and each type's fields with their types, defaults and descriptions. Do not edit this page: "
        "`python -m contracts.schema` writes it, and `python -m contracts.schema --check` (run by `scripts/test`) "
        "fails when it differs. What the fields mean in use is in [the bus contract](../contract.md).",
        "",
        "## Operations",
        "",
        "| op | request | result | mutates |",
        "|---|---|---|---|",
    ]
    for name, op in schema["ops"].items():
        mutates = "yes" if op["mutates"] else "no"
        out.append(f"| `{name}` | {_cell(_type(op['request']))} | {_cell(_type(op['result']))} | {mutates} |")
    inventory = schema["inventory"]
    out += [
        "",
        f"Every reply and every message on `vol.res` is a {_type(schema['envelope'])}; every message on `vol.evt` "
        f"a {_type(schema['event'])}. The inventory bucket holds {_type(inventory['head'])} and "
        f"{_type(inventory['chunk'])} values, and {_type(inventory['in_chunks'])} for readers before 2.2.",
        "",
        "## Types",
        "",
        "Fields not marked required may be left out, and then take their default.",
    ]
    for name in sorted(defs):
        out += ["", *_struct(name, defs[name])]
    return "\n".join(out) + "\n"


def _struct(name: str, node: Schema) -> list[str]:
    lines = [f"### {name}", ""]
    if node.get("description"):
        lines += [node["description"], ""]
    required = set(node.get("required", []))
    lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    for field, spec in node.get("properties", {}).items():
        default = f"`{json.dumps(spec['default'])}`" if "default" in spec else ""
        lines.append(f"| `{field}` | {_cell(_type(spec))} | {'yes' if field in required else ''} | {_cell(default)} "
                     f"| {_cell(_description(spec))} |")
    if node.get("additionalProperties") is False:
        lines += ["", "Unknown fields are refused."]
    return lines


def _description(spec: Schema) -> str:
    """A field's own description, or the one its non-null alternative carries (msgspec puts `Meta` there)."""
    if "description" in spec:
        return str(spec["description"])
    for alt in spec.get("anyOf", []):
        if "description" in alt:
            return str(alt["description"])
    return ""


def _type(spec: Schema) -> str:
    """A schema as a short phrase with links to the types it names."""
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in spec:
        alts = [a for a in spec["anyOf"] if a.get("type") != "null"]
        phrase = " or ".join(_type(a) for a in alts)
        return phrase + " or null" if len(alts) < len(spec["anyOf"]) else phrase
    if "enum" in spec:
        return " | ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    kind = spec.get("type")
    if kind == "array":
        phrase = f"array of {_type(spec.get('items', {}))}"
    elif kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        phrase = f"map of string to {_type(spec['additionalProperties'])}"
    else:
        phrase = str(kind) if kind else "any"
    return phrase + _constraints(spec)


def _constraints(spec: Schema) -> str:
    parts = []
    if "format" in spec:
        parts.append(spec["format"])
    if "minLength" in spec or "maxLength" in spec:
        low, high = spec.get("minLength"), spec.get("maxLength")
        parts.append(f"{low} to {high} characters" if low is not None and high is not None
                     else f"at least {low} characters" if low is not None else f"at most {high} characters")
    if "minimum" in spec or "maximum" in spec:
        low, high = spec.get("minimum"), spec.get("maximum")
        parts.append(f"{low} to {high}" if low is not None and high is not None
                     else f"≥ {low}" if low is not None else f"≤ {high}")
    if "pattern" in spec:
        parts.append(f"pattern `{spec['pattern']}`")
    return f" ({', '.join(parts)})" if parts else ""


def _cell(text: str) -> str:
    """Text in one table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
