"""How volumectl says that something failed: a sentence on stderr, and with `--json` also a JSON object on stdout
of the reply envelope's shape, `{"ok": false, "error": {"code": ..., "message": ...}}`.

Codes are the agent's wire codes (`contracts.ERROR_CODES`) for its replies, and volumectl's own for what happens
before an agent is reached: `no_agent` (no reply), `unreachable` (no NATS), `nats_refused` (NATS' permissions),
`refused` (a policy not written), `not_found`, `bad_seed`, `usage` (exit 2), `interrupted` (exit 130).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["fail"]


def fail(a: argparse.Namespace, code: str, message: str, exit_code: int = 1, *, wire: bool = False) -> int:
    """Say it (`wire`: an agent's error reply, said with its code first); returns `exit_code` for the caller."""
    if getattr(a, "json", False):
        print(json.dumps({"ok": False, "error": {"code": code, "message": message}}), flush=True)
    print(f"volumectl: {code}: {message}" if wire else f"volumectl: {message}", file=sys.stderr, flush=True)
    return exit_code
