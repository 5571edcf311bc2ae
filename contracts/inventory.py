"""The inventory: what a host holds, published on `<prefix>.inv.<host>` and kept in the KV bucket
`<prefix>_inventory` under the host's id."""

from __future__ import annotations

import msgspec

from .backups import StoreName, Trigger
from .envelope import BaseRequest
from .policies import Protection, RejectedPolicy
from .verify import LastVerify
from .volumes import ContainerRef

__all__ = ["EngineInfo", "InventoryRequest", "InventorySnapshot", "InventoryVolume", "LastBackup"]


class EngineInfo(msgspec.Struct, forbid_unknown_fields=True):
    version: str
    api_version: str
    storage_driver: str


class LastBackup(msgspec.Struct, forbid_unknown_fields=True):
    """The newest complete backup of a volume made by this host, in any store."""

    backup_id: str
    created_at: str
    store: StoreName
    size: int
    trigger: Trigger


class InventoryVolume(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    driver: str
    labels: dict[str, str]
    options: dict[str, str]
    mountpoint: str
    created_at: str
    used_by: list[ContainerRef]
    last_backup: LastBackup | None
    size: int | None = None
    """Bytes used as of the snapshot's `sizes_at` (Docker's `/system/df`, computed on a slower cadence);
    null until measured, or when the driver does not say."""
    policies: list[str] = []
    """The backup policies that cover the volume here (contracts.policies)."""
    protection: Protection | None = None
    """How the policies protect it (null from an agent before contract 2.1)."""
    protection_reason: str | None = None
    """Why it is suspect, failing, overdue or uncovered, as a sentence."""
    last_verify: LastVerify | None = None
    """Its last restore drill here: which backup, when, and the result (null: none since the agent's data dir
    was made, or from an agent before contract 2.2)."""


class InventorySnapshot(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Everything a host holds, as of `taken_at`. `seq` grows with every snapshot of one agent run.

    Fields at their default are left out (`sizes_at`, `insecure`): a reader that knows an older version of this
    type still reads the snapshot of an agent that runs securely."""

    host: str
    agent_version: str
    engine: EngineInfo
    volumes: list[InventoryVolume]
    plugins: list[str]
    """Volume drivers the Engine offers (`local` and enabled plugins)."""
    taken_at: str
    seq: int
    heartbeat_s: float
    """A snapshot comes at least this often; one older than three heartbeats means the host is stale."""
    sizes_at: str | None = None
    """When the volume sizes were computed; left out (null) when they never were (sizes off or not yet run)."""
    insecure: list[str] = []
    """What the agent runs with that it refuses unless started with `--insecure` (NATS off its host without
    credentials or TLS, an embedded server open to the network), one sentence each; empty when it runs securely."""
    rejected_policies: list[RejectedPolicy] = []
    """Backup policies this agent ignores (not signed by an operator it trusts, not valid), each with why."""


class InventoryRequest(BaseRequest):
    """The host's current inventory snapshot."""
