"""Idempotency: the outcome of every command id, kept (in JetStream KV) for at least 24 hours."""

from __future__ import annotations

import msgspec

from contracts import outcome_key

__all__ = ["MemoryOutcomes", "StoredOutcome"]


class StoredOutcome(msgspec.Struct, forbid_unknown_fields=True):
    """A recorded outcome; `fingerprint` tells a retry from another command reusing the id."""

    fingerprint: str
    reply: msgspec.Raw


class MemoryOutcomes:
    """An `OutcomeStore` in a dict, for unit tests."""

    def __init__(self) -> None:
        self.items: dict[str, StoredOutcome] = {}

    async def get(self, host: str, cmd_id: str) -> StoredOutcome | None:
        return self.items.get(outcome_key(host, cmd_id))

    async def put(self, host: str, cmd_id: str, outcome: StoredOutcome) -> None:
        self.items[outcome_key(host, cmd_id)] = outcome
