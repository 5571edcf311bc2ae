"""Backups: backup, backups, restore, clone, forget."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .envelope import BaseRequest
from .names import AgeRecipient, VolumeName

__all__ = [
    "BACKUP_ID_PATTERN",
    "BackupId",
    "BackupRecord",
    "BackupRequest",
    "BackupsRequest",
    "BackupsResult",
    "CloneRequest",
    "CloneResult",
    "Compression",
    "ForgetRequest",
    "ForgetResult",
    "RestoreRequest",
    "RestoreResult",
    "StoreName",
    "Trigger",
]

Compression = Literal["zstd", "gzip", "none"]
StoreName = Literal["local", "nats"]
"""`local`: files under the agent's data dir; `nats`: the JetStream Object Store every host can read."""
Trigger = Literal["request", "on-stop", "schedule"]

# <volume>.<UTC time>.<random>: sorts by time within a volume, safe in file names and NATS subjects.
BACKUP_ID_PATTERN = "^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,300}$"
BackupId = Annotated[str, msgspec.Meta(pattern=BACKUP_ID_PATTERN, description="A backup's id.")]


class BackupRequest(BaseRequest):
    """Back up a volume as a standard tar (compressed), verified and atomic."""

    volume: VolumeName
    compression: Compression = "zstd"
    store: StoreName = "local"
    keep: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    stop_containers: bool = False
    encrypt_to: list[AgeRecipient] = []
    """Encrypt the compressed stream to these age recipients (public keys) on its way to the store; restoring
    needs one of their identities in the restoring agent's local config (`--age-identity`)."""


class BackupRecord(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A complete backup: what it holds, where, and how to check it."""

    backup_id: str
    volume: str
    host: str
    trigger: Trigger
    size: int
    """Bytes of the tar stream."""
    stored_size: int
    """Bytes stored (compressed)."""
    sha256: str
    """Of the stored bytes."""
    compression: Compression
    store: StoreName
    location: str
    created_at: str
    duration_s: float
    stopped_containers: list[str]
    volume_driver: str = "local"
    volume_labels: dict[str, str] = {}
    container: str | None = None
    """The container whose stop triggered an `on-stop` backup."""
    policy: str | None = None
    """The policy whose schedule made a `schedule` backup (`container:<name>` for a container's labels)."""
    encrypted_to: list[str] = []
    """The age recipients the stored bytes are encrypted to (empty: not encrypted). `sha256` and `stored_size`
    are of the encrypted bytes: checked before decrypting."""
    files: int | None = None
    """Entries of the tar stream as it was written (files, directories, links: what `digest` counts as
    `entries`); null from an agent before contract 2.2."""
    content_digest: str | None = None
    """The content digest (the `digest` op's, contracts.digest) of the tar stream as it was written: a restore of
    this backup digests to it, which a restore drill checks (contracts.verify). Null before contract 2.2."""


class BackupsRequest(BaseRequest):
    """The backups this agent can restore: its own local ones and every host's in the shared store."""

    volume: VolumeName | None = None
    made_here: bool = False
    """Only backups this host made (what `<prefix>.all.backups` wants: each backup once, from its origin)."""


class BackupsResult(msgspec.Struct, forbid_unknown_fields=True):
    backups: list[BackupRecord]
    """Newest first."""


class RestoreRequest(BaseRequest):
    """Make `volume` exactly the backup. A missing volume is created (with the source volume's driver and
    labels unless given); a non-empty one is refused unless `overwrite`."""

    backup_id: BackupId
    volume: VolumeName
    overwrite: bool = False
    driver: str | None = None
    driver_opts: dict[str, str] | None = None
    labels: dict[str, str] | None = None


class RestoreResult(msgspec.Struct, forbid_unknown_fields=True):
    backup_id: str
    volume: str
    size: int
    created_volume: bool
    duration_s: float


class CloneRequest(BaseRequest):
    """Copy a volume exactly, without an intermediate file. The target is created when missing."""

    source: VolumeName
    target: VolumeName


class CloneResult(msgspec.Struct, forbid_unknown_fields=True):
    source: str
    target: str
    size: int
    created_volume: bool
    duration_s: float


class ForgetRequest(BaseRequest):
    backup_id: BackupId


class ForgetResult(msgspec.Struct, forbid_unknown_fields=True):
    backup_id: str
    forgotten: bool
