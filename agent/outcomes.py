"""Idempotency: the outcome of every command id, kept in the KV bucket `<prefix>_outcomes` for 48 hours."""

from __future__ import annotations

import msgspec
import nats.js.errors

from contracts import outcome_key
from contracts.bounds import BoundedDecoder

from .bus import Bus, nats_errors
from .elections import through_elections
from .errors import Internal

__all__ = ["KvOutcomes", "StoredOutcome"]


class StoredOutcome(msgspec.Struct, forbid_unknown_fields=True):
    """A recorded outcome; `fingerprint` tells a retry from another command reusing the id."""

    fingerprint: str
    reply: msgspec.Raw


class KvOutcomes:
    """`OutcomeStore` in the JetStream KV bucket `<prefix>_outcomes`."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._decoder = BoundedDecoder(StoredOutcome, what="The recorded outcome")

    async def get(self, host: str, cmd_id: str) -> StoredOutcome | None:
        async with nats_errors("reading a recorded outcome"):
            try:
                entry = await self.bus.outcomes_kv.get(outcome_key(host, cmd_id))
            except nats.js.errors.KeyNotFoundError:
                return None
        if not entry.value:
            return None
        try:
            return self._decoder.decode(entry.value)
        except msgspec.DecodeError as exc:
            raise Internal(f"The recorded outcome of command {cmd_id!r} cannot be read: {exc}.") from exc

    async def put(self, host: str, cmd_id: str, outcome: StoredOutcome) -> None:
        async with nats_errors("recording an outcome"):
            key, value = outcome_key(host, cmd_id), msgspec.json.encode(outcome)
            await through_elections("recording an outcome", lambda _: self.bus.outcomes_kv.put(key, value))
