"""Moving a volume between hosts (verified with the content digest of `contracts.digest`)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .backups import StoreName
from .envelope import BaseRequest
from .names import VolumeName
from .subjects import HOST_ID_PATTERN

__all__ = ["HostId", "MigrateRequest", "MigrateResult", "MigrateStep"]

HostId = Annotated[str, msgspec.Meta(pattern=HOST_ID_PATTERN, description="An agent's host id.")]
MigrateStep = Literal["check", "backup", "restore", "verify", "remove"]


class MigrateRequest(BaseRequest):
    """Sent to the source host: move `volume` to host `to` through a store both define (default: the shared
    `nats` store).

    Backup, restore on `to`, verify the target's digest against the source's, then remove the source
    only if `remove_source`. A failure at any step leaves the source intact; the error names the step.
    """

    volume: VolumeName
    to: HostId
    target: VolumeName | None = None
    """The volume's name on `to` (default: the same name)."""
    remove_source: bool = False
    overwrite: bool = False
    """Replace the content of an existing, non-empty target."""
    store: StoreName = "nats"
    """The store the backup goes through: `nats`, or a restic store both hosts define (the same repository)."""


class MigrateResult(msgspec.Struct, forbid_unknown_fields=True):
    volume: str
    to: str
    target: str
    backup_id: str
    size: int
    sha256: str
    """The content digest both hosts agree on."""
    created_volume: bool
    source_removed: bool
    duration_s: float
