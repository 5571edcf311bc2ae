"""Idempotency: the outcome of every command id, kept (in JetStream KV) for at least 24 hours."""

from __future__ import annotations

import hashlib

import msgspec

__all__ = ["MemoryOutcomes", "StoredOutcome", "outcome_key"]


class StoredOutcome(msgspec.Struct, forbid_unknown_fields=True):
    """A recorded outcome; `fingerprint` tells a retry from another command reusing the id."""

    fingerprint: str
    reply: msgspec.Raw


def outcome_key(host: str, cmd_id: str) -> str:
    """A KV key for any id (ids may hold characters keys may not)."""
    return f"{host}.{hashlib.sha256(cmd_id.encode()).hexdigest()}"


class MemoryOutcomes:
    """An `OutcomeStore` in a dict, for unit tests."""

    def __init__(self) -> None:
        self.items: dict[str, StoredOutcome] = {}

    async def get(self, host: str, cmd_id: str) -> StoredOutcome | None:
        return self.items.get(outcome_key(host, cmd_id))

    async def put(self, host: str, cmd_id: str, outcome: StoredOutcome) -> None:
        self.items[outcome_key(host, cmd_id)] = outcome
