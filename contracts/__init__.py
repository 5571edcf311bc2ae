"""The volume-agent bus API: msgspec types for every request, result, event and the reply envelope.

Importable alone (it needs only msgspec). `schema.json` beside this file is the same API as JSON Schema.
"""

from .backups import (
    BACKUP_ID_PATTERN,
    BackupRecord,
    BackupRequest,
    BackupsRequest,
    BackupsResult,
    CloneRequest,
    CloneResult,
    Compression,
    ForgetRequest,
    ForgetResult,
    RestoreRequest,
    RestoreResult,
    StoreName,
)
from .envelope import ERROR_CODES, ERROR_STATUS, BaseRequest, CommandId, ErrorBody, ErrorCode, Reply
from .events import EVENT_KINDS, EventKind, VolumeEvent
from .inventory import EngineInfo, InventoryRequest, InventorySnapshot, InventoryVolume, LastBackup
from .migrate import DigestRequest, DigestResult, HostId, MigrateRequest, MigrateResult, MigrateStep
from .ops import FLEET_OPS, OPS, Op
from .share import ContainerSpec, Mount, ShareRequest, ShareResult, VolumesFrom
from .subjects import DEFAULT_PREFIX, HOST_ID_PATTERN, Subjects, valid_host_id
from .volumes import (
    VOLUME_NAME_PATTERN,
    ContainerRef,
    CreateRequest,
    InspectRequest,
    ListFilters,
    ListRequest,
    ListResult,
    PruneRequest,
    PruneResult,
    RemoveRequest,
    RemoveResult,
    VolumeName,
    VolumeRecord,
)

CONTRACT_VERSION = "1.2.0"
"""Semantic version of the bus API: a breaking change bumps the major."""

__all__ = [
    "BACKUP_ID_PATTERN",
    "CONTRACT_VERSION",
    "DEFAULT_PREFIX",
    "ERROR_CODES",
    "ERROR_STATUS",
    "EVENT_KINDS",
    "FLEET_OPS",
    "HOST_ID_PATTERN",
    "OPS",
    "VOLUME_NAME_PATTERN",
    "BackupRecord",
    "BackupRequest",
    "BackupsRequest",
    "BackupsResult",
    "BaseRequest",
    "CloneRequest",
    "CloneResult",
    "CommandId",
    "Compression",
    "ContainerRef",
    "ContainerSpec",
    "CreateRequest",
    "DigestRequest",
    "DigestResult",
    "EngineInfo",
    "ErrorBody",
    "ErrorCode",
    "EventKind",
    "ForgetRequest",
    "ForgetResult",
    "HostId",
    "InspectRequest",
    "InventoryRequest",
    "InventorySnapshot",
    "InventoryVolume",
    "LastBackup",
    "ListFilters",
    "ListRequest",
    "ListResult",
    "MigrateRequest",
    "MigrateResult",
    "MigrateStep",
    "Mount",
    "Op",
    "PruneRequest",
    "PruneResult",
    "RemoveRequest",
    "RemoveResult",
    "Reply",
    "RestoreRequest",
    "RestoreResult",
    "ShareRequest",
    "ShareResult",
    "StoreName",
    "Subjects",
    "VolumeEvent",
    "VolumeName",
    "VolumeRecord",
    "VolumesFrom",
    "valid_host_id",
]
