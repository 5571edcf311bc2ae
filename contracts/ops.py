"""The operations an agent accepts: each op's request and result types."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .backups import (
    BackupRecord,
    BackupRequest,
    BackupsRequest,
    BackupsResult,
    CloneRequest,
    CloneResult,
    ForgetRequest,
    ForgetResult,
    RestoreRequest,
    RestoreResult,
)
from .envelope import BaseRequest
from .inventory import InventoryRequest, InventorySnapshot
from .migrate import DigestRequest, DigestResult, MigrateRequest, MigrateResult
from .share import ShareRequest, ShareResult
from .volumes import (
    CreateRequest,
    InspectRequest,
    ListRequest,
    ListResult,
    PruneRequest,
    PruneResult,
    RemoveRequest,
    RemoveResult,
    VolumeRecord,
)

__all__ = ["FLEET_OPS", "OPS", "Op"]


@dataclass(frozen=True)
class Op:
    name: str
    request: type[BaseRequest]
    result: type[msgspec.Struct]
    mutates: bool
    """Mutating ops are deduplicated by `id`; reads are answered afresh every time."""


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("create", CreateRequest, VolumeRecord, mutates=True),
        Op("inspect", InspectRequest, VolumeRecord, mutates=False),
        Op("list", ListRequest, ListResult, mutates=False),
        Op("remove", RemoveRequest, RemoveResult, mutates=True),
        Op("prune", PruneRequest, PruneResult, mutates=True),
        Op("share", ShareRequest, ShareResult, mutates=True),
        Op("backup", BackupRequest, BackupRecord, mutates=True),
        Op("backups", BackupsRequest, BackupsResult, mutates=False),
        Op("restore", RestoreRequest, RestoreResult, mutates=True),
        Op("clone", CloneRequest, CloneResult, mutates=True),
        Op("forget", ForgetRequest, ForgetResult, mutates=True),
        Op("inventory", InventoryRequest, InventorySnapshot, mutates=False),
        Op("digest", DigestRequest, DigestResult, mutates=False),
        Op("migrate", MigrateRequest, MigrateResult, mutates=True),
    )
}

# Read-only ops that every agent answers on `<prefix>.all.<op>`.
FLEET_OPS: tuple[str, ...] = ("list", "inventory", "backups")
