"""Every agent's copies of the signed policy entries it applies, in the bucket `<prefix>_policy_copies`.

The policies bucket keeps a few revisions of each policy, and anyone who may write it (every operator, even
one limited to a few hosts) can push a genuine revision out of that history, or purge it. An agent that
starts later would then never see it. So each agent, once it holds a verified entry (a policy or a signed
removal), puts that exact entry under `<host>.<name>`, a key NATS permissions let only that host's agent
write; an agent reads every host's copies when it starts and whenever the bucket's entry for a name is one it
does not apply. A copy is not trusted for who stored it: `PolicyBook` verifies its operator's signature like
any entry, so a dishonest host can at most offer an old genuine version, which loses to a newer one.
"""

from __future__ import annotations

import msgspec
import nats.errors
import nats.js.errors
import structlog

from contracts import PolicyEntry, policy_copy_key, policy_copy_key_parts
from volumectl.kv import IncompleteRead, read_bucket

from ..bus import Bus
from ..streams import ensure_policy_copies

__all__ = ["PolicyCopies"]

log = structlog.get_logger(__name__)

PUT_TIMEOUT_S = 5.0


class PolicyCopies:
    """Reads every host's copies and keeps this host's own up to date."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.bucket = bus.subjects.policy_copies_bucket
        self._ready: bool | None = None
        """None: not made or found yet (tried again at the next use); False: this agent may not (said once)."""
        self._kept: dict[str, bytes] = {}
        """What this host's keys hold, as far as this agent knows (its puts, and its keys read back)."""

    async def ready(self) -> bool:
        if self._ready is None:
            try:
                self._ready = await ensure_policy_copies(self.bus.js, self.bus.subjects, self.bus.settings.replicas,
                                                         self.bus.denials)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("policy.copies_unavailable", bucket=self.bucket, error=str(exc) or type(exc).__name__)
        return bool(self._ready)

    async def read(self) -> list[tuple[str, bytes]] | None:
        """(policy name, entry) of every host's copy; None if the bucket could not be read whole."""
        if not await self.ready():
            return None
        try:
            values = await read_bucket(self.bus.js, self.bucket)
        except nats.js.errors.BucketNotFoundError:
            values = {}
        except (IncompleteRead, nats.errors.Error, TimeoutError) as exc:
            log.warning("policy.copies_read_failed", bucket=self.bucket, error=str(exc) or type(exc).__name__)
            return None
        out = []
        for key, raw in values.items():
            parts = policy_copy_key_parts(key)
            if parts is None:
                continue
            host, name = parts
            if host == self.bus.host:
                self._kept[name] = raw
            out.append((name, raw))
        return out

    async def keep(self, entries: list[PolicyEntry]) -> None:
        """Put this host's copy of each entry that its key does not hold yet; a failure is said and tried again
        at the next call."""
        if not await self.ready():
            return
        for entry in entries:
            raw = msgspec.json.encode(entry)
            if self._kept.get(entry.name) == raw:
                continue
            subject = f"$KV.{self.bucket}.{policy_copy_key(self.bus.host, entry.name)}"
            try:
                await self.bus.js.publish(subject, raw, timeout=PUT_TIMEOUT_S)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("policy.copy_not_kept", policy=entry.name, bucket=self.bucket,
                            error=str(exc) or type(exc).__name__)
                continue
            self._kept[entry.name] = raw
