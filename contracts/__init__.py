"""The volume-agent bus API: msgspec types for every request, result, event and the reply envelope.

Importable alone (it needs only msgspec). `schema.json` beside this file is the same API as JSON Schema.
"""

from . import labels
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
    Trigger,
)
from .digest import DigestRequest, DigestResult
from .envelope import ERROR_CODES, ERROR_STATUS, BaseRequest, CommandId, ErrorBody, ErrorCode, Reply
from .events import EVENT_KINDS, EventKind, VolumeEvent
from .inventory import EngineInfo, InventoryRequest, InventorySnapshot, InventoryVolume, LastBackup
from .migrate import HostId, MigrateRequest, MigrateResult, MigrateStep
from .ops import FLEET_OPS, OPS, Op, result_as
from .share import ContainerSpec, Mount, ShareRequest, ShareResult, VolumesFrom
from .subjects import DEFAULT_PREFIX, HOST_ID_PATTERN, SERVICE_NAME, Subjects, catalog_key, outcome_key, valid_host_id
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

CONTRACT_VERSION = "2.0.0"
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
    "SERVICE_NAME",
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
    "Trigger",
    "VolumeEvent",
    "VolumeName",
    "VolumeRecord",
    "VolumesFrom",
    "catalog_key",
    "labels",
    "outcome_key",
    "result_as",
    "valid_host_id",
]
