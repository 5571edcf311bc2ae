"""Restores and clones into a volume, as they go: a note per target volume, so a crash leaves no half-state.

- While one writes into the volume, its note says so. A note left in that state (the agent was killed, or Docker
  was gone when the restore tried to undo its writes) means the volume holds part of a backup: the next restore
  or clone into that volume, and the agent's next start, undo it first (a volume the restore made goes again, one
  that was there is emptied).
- Once the volume holds the whole backup, the note keeps the command's id and result, until another command
  writes into that volume (or for two days). A durable command delivered again because the agent died before
  recording its outcome gets that result, rather than `conflict` from its own full target.

The notes are small files under `<data-dir>/restoring/`, named after the volume (volume names are safe file
names).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog

from ..private_files import open_private, private_dir

__all__ = ["Note", "Unfinished", "current_cmd_id"]

SUFFIX = ".json"
# A finished note answers a redelivery of its command; the idempotency records last as long (48 h).
KEEP_DONE_S = 2 * 24 * 3600.0


def current_cmd_id() -> str | None:
    """The id of the command being applied (the dispatcher binds it for every operation)."""
    cmd_id = structlog.contextvars.get_contextvars().get("cmd_id")
    return str(cmd_id) if cmd_id is not None else None


class Note(msgspec.Struct, omit_defaults=True):
    created: bool
    """Whether the restore created the volume (undoing removes it) or found it (undoing empties it)."""
    cmd_id: str | None = None
    result: dict[str, Any] | None = None
    """Set once the volume holds the whole backup: the command's result."""


class Unfinished:
    """The notes; without a directory (unit tests) it keeps none."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def begin(self, volume: str, *, created: bool) -> Note:
        """Before the first byte is written into `volume`, on behalf of the command being applied."""
        self.purge_old()
        note = Note(created=created, cmd_id=current_cmd_id())
        self._write(volume, note)
        return note

    def done(self, volume: str, note: Note, result: msgspec.Struct) -> None:
        """`volume` holds the whole backup: keep `result` for a redelivery of the same command."""
        self._write(volume, msgspec.structs.replace(note, result=msgspec.to_builtins(result)))

    def end(self, volume: str) -> None:
        if self.root is not None:
            (self.root / f"{volume}{SUFFIX}").unlink(missing_ok=True)

    def get(self, volume: str) -> Note | None:
        """The note on `volume`; an unreadable one says "found, not finished" (undoing empties the volume)."""
        if self.root is None:
            return None
        try:
            return msgspec.json.decode((self.root / f"{volume}{SUFFIX}").read_bytes(), type=Note)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError):
            return Note(created=False)

    def volumes(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}") if not p.name.startswith("."))

    def _write(self, volume: str, note: Note) -> None:
        if self.root is None:
            return
        private_dir(self.root)
        tmp = self.root / f".{volume}{SUFFIX}.tmp"
        with open_private(tmp) as f:
            f.write(msgspec.json.encode(note))
        os.replace(tmp, self.root / f"{volume}{SUFFIX}")

    def purge_old(self) -> None:
        """Finished notes older than any redelivery."""
        if self.root is None:
            return
        old = time.time() - KEEP_DONE_S
        for name in self.volumes():
            path = self.root / f"{name}{SUFFIX}"
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < old and (note := self.get(name)) is not None and note.result is not None:
                    path.unlink()
