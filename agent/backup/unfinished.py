"""Restores and clones cut off mid-way: a note per target volume while one writes into it.

A note left behind (the agent was killed, or Docker was gone when the restore tried to undo its writes) means
the volume holds part of a backup. The next restore or clone into that volume, and the agent's next start, undo
it first: a volume the restore made goes again, one that was there is emptied. Without this, a durable restore
delivered again after a crash finds its own half-written target and refuses it as not empty.

The notes are small files under `<data-dir>/restoring/`, named after the volume (volume names are safe file
names), each holding whether the restore created the volume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["Unfinished"]

SUFFIX = ".json"


class Unfinished:
    """The notes; without a directory (unit tests) it keeps none."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def begin(self, volume: str, *, created: bool) -> None:
        """Before the first byte is written into `volume`."""
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{volume}{SUFFIX}.tmp"
        tmp.write_text(json.dumps({"created": created}))
        os.replace(tmp, self.root / f"{volume}{SUFFIX}")

    def end(self, volume: str) -> None:
        """Once `volume` holds the whole backup, or what was written is undone."""
        if self.root is not None:
            (self.root / f"{volume}{SUFFIX}").unlink(missing_ok=True)

    def created(self, volume: str) -> bool | None:
        """None: no restore into `volume` was cut off. Else whether that restore created the volume (an
        unreadable note says no: the volume is emptied rather than removed)."""
        if self.root is None:
            return None
        try:
            note = json.loads((self.root / f"{volume}{SUFFIX}").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return False
        return bool(note.get("created")) if isinstance(note, dict) else False

    def volumes(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}") if not p.name.startswith("."))
