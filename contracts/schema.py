"""Generate `contracts/schema.json` from the Structs: `python -m contracts.schema [--check]`."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import msgspec

from . import CONTRACT_VERSION
from .envelope import Reply
from .events import VolumeEvent
from .inventory_chunks import InventoryChunk, InventoryHead, InventoryInChunks
from .ops import OPS

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def build() -> dict[str, Any]:
    """The whole bus API as one JSON Schema document."""
    types: list[Any] = [Reply, VolumeEvent]
    for op in OPS.values():
        types += [op.request, op.result]
    types += [InventoryHead, InventoryChunk, InventoryInChunks]
    (_, components) = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "volume-agent bus API",
        "version": CONTRACT_VERSION,
        "ops": {
            name: {
                "request": {"$ref": f"#/$defs/{op.request.__name__}"},
                "result": {"$ref": f"#/$defs/{op.result.__name__}"},
                "mutates": op.mutates,
            }
            for name, op in OPS.items()
        },
        "envelope": {"$ref": "#/$defs/Reply"},
        "event": {"$ref": "#/$defs/VolumeEvent"},
        # The values of the inventory bucket (contracts.inventory_chunks).
        "inventory": {"head": {"$ref": "#/$defs/InventoryHead"}, "chunk": {"$ref": "#/$defs/InventoryChunk"},
                      "in_chunks": {"$ref": "#/$defs/InventoryInChunks"}},
        "$defs": _dedented(components),
    }


def _dedented(node: Any) -> Any:
    """Every `description` dedented (`inspect.cleandoc`), as msgspec 0.23 does and 0.22 did not: the schema is the
    same whichever msgspec made it."""
    if isinstance(node, dict):
        return {k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _dedented(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_dedented(v) for v in node]
    return node


def render() -> str:
    return msgspec.json.format(msgspec.json.encode(build()), indent=2).decode() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text() != text:
            print("contracts/schema.json is stale: run `python -m contracts.schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
