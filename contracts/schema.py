"""Generate `contracts/schema.json` from the Structs, and the contract reference page from it:
`python -m contracts.schema [--check] [--markdown PATH]`.

The page (`docs/reference/schema.md` in a checkout, where `mkdocs.yml` is) is written and checked with the schema,
so neither drifts from the Structs. `--markdown PATH` names another page; in an installed package without the
docs, only the schema is handled."""

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
from .schema_markdown import render_markdown

SCHEMA_PATH = Path(__file__).with_name("schema.json")
REPO = Path(__file__).resolve().parent.parent
MARKDOWN_PATH = REPO / "docs" / "reference" / "schema.md"


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
    args = sys.argv[1:]
    check = "--check" in args
    markdown: Path | None = MARKDOWN_PATH if (REPO / "mkdocs.yml").exists() else None
    if "--markdown" in args:
        i = args.index("--markdown")
        if i + 1 >= len(args):
            print("usage: python -m contracts.schema [--check] [--markdown PATH]", file=sys.stderr)
            return 2
        markdown = Path(args[i + 1])
    schema = build()
    outputs = [(SCHEMA_PATH, render())]
    if markdown is not None:
        outputs.append((markdown, render_markdown(schema)))
    if check:
        stale = [path for path, text in outputs if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path} is stale: run `python -m contracts.schema`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
