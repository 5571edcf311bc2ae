"""Events published on `<prefix>.evt.<host>.<kind>`."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["EVENT_KINDS", "EventKind", "VolumeEvent"]

EventKind = Literal[
    "volume.created",
    "volume.removed",
    "volume.mounted",
    "volume.unmounted",
    "backup.started",
    "backup.progress",
    "backup.completed",
    "backup.failed",
    "restore.started",
    "restore.progress",
    "restore.completed",
    "restore.failed",
]
EVENT_KINDS: tuple[str, ...] = EventKind.__args__  # type: ignore[attr-defined]


class VolumeEvent(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Something happened to a volume on a host; `cmd_id` names the command that caused it.

    `volume.*` events come from Docker's own event stream, so a volume created or removed outside the
    agent (`docker volume create`) is published too, without a `cmd_id`.
    """

    host: str
    kind: EventKind
    volume: str
    at: str
    cmd_id: str | None = None
    backup_id: str | None = None
    bytes_done: int | None = None
    """Tar bytes so far (`*.progress`) or in all (`*.completed`); restic stores: bytes of files read so far."""
    bytes_total: int | None = None
    """`*.progress`: what `bytes_done` will come to, when known: a restore's backup size; for a backup an estimate
    (its last backup's size, or Docker's last measure of the volume), which the backup may exceed; a backup into a
    restic store: restic's own count (contract 2.3)."""
    percent: float | None = None
    """Done so far, 0 to 100, when known."""
    eta_s: float | None = None
    """Seconds still to go, when estimated (restic's estimate)."""
    error: str | None = None
    """Why it failed (`*.failed`)."""
    container: str | None = None
    """The container that mounted or unmounted the volume, or whose stop triggered the backup."""
