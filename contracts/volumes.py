"""Volume lifecycle: create, inspect, list, remove, prune."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .backups import BackupRecord
from .envelope import BaseRequest
from .names import VOLUME_NAME_PATTERN, VolumeName

__all__ = [
    "VOLUME_NAME_PATTERN",
    "ContainerRef",
    "CreateRequest",
    "InspectRequest",
    "ListFilters",
    "ListRequest",
    "ListResult",
    "PruneRequest",
    "PruneResult",
    "RemoveRequest",
    "RemoveResult",
    "VolumeName",
    "VolumeRecord",
]



class ContainerRef(msgspec.Struct, forbid_unknown_fields=True):
    """A container that mounts a volume."""

    container: str
    id: str
    state: str


class VolumeRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A volume as the agent reports it."""

    name: str
    driver: str
    mountpoint: str
    labels: dict[str, str]
    options: dict[str, str]
    scope: str
    created_at: str
    used_by: list[ContainerRef]


class CreateRequest(BaseRequest):
    """Create a volume; the same spec under an existing name is a no-op."""

    name: VolumeName
    driver: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "local"
    driver_opts: dict[str, str] = {}
    labels: dict[str, str] = {}


class InspectRequest(BaseRequest):
    name: VolumeName


class ListFilters(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    label: list[str] | None = None
    driver: str | None = None
    dangling: bool | None = None


class ListRequest(BaseRequest):
    filters: ListFilters | None = None


class ListResult(msgspec.Struct, forbid_unknown_fields=True):
    volumes: list[VolumeRecord]


class RemoveRequest(BaseRequest):
    """Remove a volume. A volume in use is refused (`in_use`) even with `force`,
    which, as in `docker volume rm -f`, only overrides driver errors.
    `backup_first` makes a final backup; if it fails, nothing is removed."""

    name: VolumeName
    force: bool = False
    backup_first: bool = False


class RemoveResult(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: str
    removed: bool
    backup: BackupRecord | None = None
    """The final backup's record, with `backup_first`."""


class PruneRequest(BaseRequest):
    """Remove the volumes no container uses, optionally only those with a label."""

    dry_run: bool = False
    label: list[str] | None = None


class PruneResult(msgspec.Struct, forbid_unknown_fields=True):
    dry_run: bool
    volumes: list[str]
