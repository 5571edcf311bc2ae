"""The inventory: what a host holds, kept in the KV bucket `<prefix>_inventory` in chunks (contract 2.2), and
published on `<prefix>.inv.<key>` as each key is written (`contracts.inventory_chunks` has the layout)."""

from __future__ import annotations

from typing import Annotated

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
    chunk: int | None = None
    """Set in the reply to an `inventory` request that asked for one chunk (contract 2.2): `volumes` holds that
    chunk's volumes only."""
    chunks: int | None = None
    """How many chunks this host's inventory has now (contract 2.2; left out in a whole snapshot): ask for each of
    0 to `chunks - 1`."""


class InventoryRequest(BaseRequest):
    """The host's current inventory snapshot, whole; or, with `chunk` (contract 2.2), one chunk of it.

    A whole snapshot that does not fit one NATS message (more than about 3,000 volumes under the default 1 MiB) is
    refused as `invalid`, saying to ask chunk by chunk: the reply to `chunk: 0` says how many there are (`chunks`).
    """

    chunk: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] | None = None
    """One chunk of the inventory, 0 to `chunks - 1` (contract 2.2; agents before it refuse the field)."""
