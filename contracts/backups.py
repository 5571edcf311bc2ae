"""Backups: backup, backups, restore, clone, forget."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .envelope import BaseRequest
from .names import AgeRecipient, VolumeName

__all__ = [
    "BACKUP_ID_PATTERN",
    "STORE_NAME_PATTERN",
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
    "ResticSnapshot",
    "RestoreRequest",
    "RestoreResult",
    "StoreName",
    "Trigger",
]

Compression = Literal["zstd", "gzip", "none"]
# Open since 2.2 (it was the Literal "local" | "nats"): a reader accepts stores it does not know.
STORE_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
StoreName = Annotated[str, msgspec.Meta(
    pattern=STORE_NAME_PATTERN,
    description="A backup store's name, as the host's stores file defines it. Every host has `local` (files under "
                "the agent's data dir) and `nats` (the JetStream Object Store every host can read); others (restic "
                "repositories) are local configuration, so the same name may mean another place on another host.")]
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


class ResticSnapshot(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Where a backup in a restic store is, and restic's summary of making it."""

    snapshot_id: str
    """The snapshot's id as `restic backup --json` reports it (its short form): `restic restore <id>` takes it."""
    repository_id: str
    """The repository's own id (`restic cat config`): the same repository whatever name a host gives its store."""
    source: Literal["directory", "tar"]
    """directory: the volume's files as restic read them (incremental: unchanged files are not read again);
    tar: the volume's tar stream through `backup --stdin` (volumes the agent reaches through Docker's archive API),
    a single file `path` in the snapshot."""
    path: str | None = None
    """tar: the file in the snapshot that holds the stream."""
    parent: str | None = None
    """The snapshot restic compared the files with (the volume's previous one made by this host in this store)."""
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    """Files restic did not read again: unchanged since `parent`."""
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_added: int = 0
    """Bytes this backup added to the repository (after deduplication and compression)."""
    total_files_processed: int = 0
    """Regular files (restic counts no symbolic links, FIFOs or devices here)."""
    total_bytes_processed: int = 0
    entries: int | None = None
    """directory: every entry under the volume root when it was backed up (files, directories, links...), as the
    agent counted them: what a restore of it may hold."""
    root_uid: int | None = None
    root_gid: int | None = None
    root_mode: int | None = None
    """directory: the volume root's owner and mode (a snapshot of `.` holds only what is inside it)."""


class BackupRecord(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A complete backup: what it holds, where, and how to check it."""

    backup_id: str
    volume: str
    host: str
    trigger: Trigger
    size: int
    """Bytes of the tar stream. restic `directory` snapshots: the bytes of the files restic processed."""
    stored_size: int
    """Bytes stored (compressed). restic: the bytes this backup added to the repository (`data_added`)."""
    sha256: str
    """Of the stored bytes. restic: empty (restic checks every blob it reads by its own SHA-256)."""
    compression: Compression
    """restic: `zstd` unless the store's `compression` is `off` (restic compresses itself, repository version 2)."""
    store: StoreName
    location: str
    """A file's path, `nats://<bucket>/<id>`, or `restic:<store>/<snapshot id>` (never a repository's URL: it may
    hold credentials)."""
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
    warnings: list[str] = []
    """What went wrong without failing the backup, one sentence each (a post hook that failed). In the `backup`
    reply and the outcome only, never in the catalog: the record is stored before the post hooks run (2.3)."""
    restic: ResticSnapshot | None = None
    """A backup in a restic store: its snapshot and restic's summary."""
    files: int | None = None
    """Entries of the tar stream as it was written (files, directories, links: what `digest` counts as
    `entries`); null from an agent before contract 2.3."""
    content_digest: str | None = None
    """The content digest (the `digest` op's, contracts.digest) of the tar stream as it was written: a restore of
    this backup digests to it, which a restore drill checks (contracts.verify). Null before contract 2.3."""


class BackupsRequest(BaseRequest):
    """The backups this agent can restore: its own local ones, and every host's in the shared store and in the
    restic stores this host defines."""

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
