"""What one restore may write: the tar stream its record states (plus a margin), and what the volume's file
system has free.

A record is the word of the host that wrote it, and a host's agent identity may write records into the shared
store and ask any host to restore them. A few KB of zstd can unpack to terabytes. So:
- The tar stream, decompressed and decrypted, is counted on its way into tar: the kernel moves it between the
  pipes (`pipes.pump`, splice(2)), or, on the archive API's path where Python hands it to Docker anyway,
  `pipes.Capped` cuts it. tar never gets more than `limit(record)` bytes: past it, the restore stops, its writes
  are undone (`Unfinished`), and it answers `corrupt`. The check of another host's member list counts the same
  way, so such a bomb is refused there, before the target is touched.
- A record has no file count. Every tar member takes at least one 512-byte header, so the same bound holds the
  files to `limit // 512`.
- A restic `directory` snapshot's record counts the files' bytes (restic's), not a tar stream: its bound adds
  ENTRY_BYTES for each entry the agent counted in the volume as restic read it (`restic dump` writes a header,
  padding and maybe an extended header for each), and its listing may not hold more entries than that.
- Before anything is written, the record's size must fit in the free space of the volume's file system
  (`fits`: statvfs, the space an unprivileged writer may use, plus what `overwrite` frees), or `unavailable`.
  Only for a volume whose directory this host sees (plain local volumes); for one mounted on demand (tmpfs,
  NFS, a plugin) the archive API says nothing about space: the stream bound is what holds there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from contracts import BackupRecord

from ..errors import Corrupt, Unavailable

__all__ = ["ENTRY_BYTES", "MARGIN", "fits", "limit", "most_entries", "too_big"]

# Above the stated size, what a tar stream may still hold: the record's `size` is the exact stream the agent
# wrote (headers and end padding included), but another tar writer may pad its end to larger records (a blocking
# factor of 2048 makes them 1 MiB). Small next to any disk, and no room for a bomb.
MARGIN = 1 << 20
# Per entry of a `restic dump`: a 512-byte header, up to 511 bytes of padding, and a PAX header for a long name or
# extended attributes (the rest is room for a few).
ENTRY_BYTES = 4096


def most_entries(record: BackupRecord) -> int:
    """The entries a restic `directory` snapshot may hold: what the agent counted when it was made (and a few, for
    what appeared meanwhile)."""
    snap = record.restic
    if snap is None:
        return 0
    if snap.entries is not None:
        return snap.entries + max(256, snap.entries // 100)
    return snap.total_files_processed + snap.dirs_new + snap.dirs_changed + snap.dirs_unmodified + 256


def limit(record: BackupRecord) -> int:
    """The most tar stream a restore of `record` hands to tar."""
    extra = ENTRY_BYTES * most_entries(record) if record.restic is not None and record.restic.source == "directory" \
        else 0
    return max(record.size, 0) + MARGIN + extra


def too_big(record: BackupRecord, *, written: bool) -> Corrupt:
    where = ("what was written to the volume is undone" if written else "nothing was written to the volume")
    return Corrupt(
        f"Backup {record.backup_id!r} unpacks to more than its record says: its tar stream goes past "
        f"{limit(record)} bytes (the record's {record.size} bytes plus a margin of {limit(record) - record.size} "
        f"bytes); {where}. "
        "A backup that grows when unpacked is a decompression bomb or was altered: restore another backup.")


def _size(n: int) -> str:
    value, unit = float(n), "bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):  # noqa: B007 - the last one is the unit
        value /= 1024
        if value < 1024:
            break
    return f"{n} bytes ({value:.1f} {unit})"


def _used(path: Path) -> int:
    """Bytes the entries under `path` take on its file system (what emptying it frees), each inode once."""
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_blocks * 512
    return total


async def fits(record: BackupRecord, path: Path, volume: str, *, emptied: bool, place: str | None = None) -> None:
    """`Unavailable` unless `record`'s tar stream fits in the free space of `path`'s file system (the volume's
    directory); `emptied`: the restore empties it first (`overwrite`), so what it holds counts as free. `place`
    names the target when it is not a volume (a drill's scratch directory)."""

    def free() -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    try:
        available = await asyncio.to_thread(free)
        if record.size <= available:
            return
        if emptied:
            available += await asyncio.to_thread(_used, path)
            if record.size <= available:
                return
    except OSError:
        return  # not there to measure (gone meanwhile): the stream bound still holds
    if place is not None:
        raise Unavailable(
            f"Backup {record.backup_id!r} holds {_size(record.size)}, more than the {_size(available)} free on the "
            f"file system of {place} ({path}); nothing was written. Free space there (a drill needs the backup's "
            "size free in the agent's data dir).")
    raise Unavailable(
        f"Backup {record.backup_id!r} holds {_size(record.size)}, more than the {_size(available)} free on the "
        f"file system of volume {volume!r}; nothing was written to it. Free space there, or restore into a "
        "volume on a larger disk.")
