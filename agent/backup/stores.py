"""Where backups live: every store by name, and what all stores share (the writer that hashes, ids, order).

Every store writes a backup's bytes through a `StoreWriter` and its record last: a backup is in a catalog
exactly when its record exists.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from contracts import BackupRecord, Compression

from ..errors import NotFound, Unavailable
from ..typing import BackupStore

__all__ = ["StoreWriter", "Stores", "new_backup_id", "newest_first", "suffix_of"]

log = structlog.get_logger(__name__)

PARTIAL = ".partial"
FOLLOW_CHUNK = 1 << 20
SYNC_EVERY = 64 << 20
# How long the hashing thread waits for the compressor to write more; short against a multi-second backup.
FOLLOW_IDLE_S = 0.005
_SUFFIX = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
# What age adds to an encrypted backup's name (`.tar.zst.age`), as the age tool names its files.
ENCRYPTED = ".age"
_ALL_SUFFIXES = sorted((s + e for s in _SUFFIX.values() for e in ("", ENCRYPTED)), key=len, reverse=True)


def suffix_of(compression: Compression, *, encrypted: bool = False) -> str:
    return _SUFFIX[compression] + (ENCRYPTED if encrypted else "")


def new_backup_id(volume: str, now: datetime | None = None) -> str:
    """`<volume>.<UTC time>.<random>`: sorts by time within a volume."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{volume}.{stamp}.{uuid.uuid4().hex[:6]}"


def newest_first(records: Iterable[BackupRecord]) -> list[BackupRecord]:
    """The order every catalog is given in."""
    return sorted(records, key=lambda r: (r.created_at, r.backup_id), reverse=True)


def backup_id_of(data_file: str) -> str | None:
    """The backup id a data file belongs to (volume names may hold `.tar` themselves)."""
    for suffix in _ALL_SUFFIXES:
        if data_file.endswith(suffix):
            return data_file[: -len(suffix)]
    return None



@dataclass
class StoreWriter:
    """Bytes of one backup on their way in: hashed and counted as they are written (blocking calls)."""

    path: Path
    final: Path
    location: str
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    written: int = 0
    _fd: int = -1

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        view = memoryview(chunk)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise store_errors(exc, self.path.parent) from exc
        self.written += len(chunk)

    @property
    def fd(self) -> int:
        """The open file, for a process to write into directly (then `follow` hashes what it writes)."""
        return self._fd

    def follow(self, done: threading.Event, on_chunk: Callable[[int], None]) -> None:
        """Blocking: hash and count the file as another process writes it, until `done` and all is read.

        The writer never waits for us: hashing and write-back overlap the compression instead of
        following it.
        """
        unsynced = 0
        with open(self.path, "rb", buffering=0) as f:
            while True:
                chunk = f.read(FOLLOW_CHUNK)
                if chunk:
                    self.sha256.update(chunk)
                    self.written += len(chunk)
                    on_chunk(len(chunk))
                    unsynced += len(chunk)
                    if unsynced >= SYNC_EVERY:
                        # Write back while the compressor goes on, so the final fsync has little left.
                        os.fdatasync(self._fd)
                        unsynced = 0
                elif done.is_set():
                    if not (rest := f.read()):
                        return
                    self.sha256.update(rest)
                    self.written += len(rest)
                else:
                    time.sleep(FOLLOW_IDLE_S)

    def finish(self, *, sync: bool = True) -> None:
        """Flush to disk (unless the file is only a spool) and move into place."""
        try:
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            raise store_errors(exc, self.path.parent) from exc
        os.close(self._fd)
        self._fd = -1
        if self.path.stat().st_size != self.written:
            raise Unavailable(f"The backup file {self.path} does not hold the bytes written to it.")
        os.rename(self.path, self.final)
        if sync:
            fsync_dir(self.final.parent)

    def check_space(self) -> None:
        """After the process writing this file failed: raise the store's own error if the store is full.

        The process saw the errno, we only see its words; writing a little more ourselves asks the file system
        (the partial file is discarded anyway)."""
        if self._fd < 0:
            return
        try:
            at = os.fstat(self._fd).st_size
            view = memoryview(bytes(PROBE_BYTES))
            while view:  # a short write means "almost full": the next one says why
                n = os.pwrite(self._fd, view, at)
                view, at = view[n:], at + n
        except OSError as exc:
            if exc.errno in FULL:
                raise store_errors(exc, self.path.parent) from exc

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
PROBE_BYTES = 64 << 10


def store_errors(exc: OSError, where: Path) -> Unavailable:
    """A file system failure of the store, as a sentence; a full store (or quota) is recognised by errno."""
    if exc.errno in FULL:
        why = "over its quota" if exc.errno == errno.EDQUOT else "full (no space left on device)"
        return Unavailable(f"The backup store at {where} is {why}; nothing was kept.")
    return Unavailable(f"The backup store at {where} failed: {exc.strerror or exc}.")


class Stores:
    """Every store the agent writes to, by name; a backup is found by its id alone, whichever holds it."""

    def __init__(self, *stores: BackupStore) -> None:
        self.by_name = {s.name: s for s in stores}

    def __getitem__(self, name: str) -> BackupStore:
        try:
            return self.by_name[name]
        except KeyError:
            raise NotFound(f"The {name!r} backup store is not configured on this agent.") from None

    async def get(self, backup_id: str) -> tuple[BackupStore, BackupRecord]:
        for store in self.by_name.values():
            try:
                return store, await store.get(backup_id)
            except NotFound:
                continue
        names = ", ".join(self.by_name)
        raise NotFound(f"Backup {backup_id!r} is in none of this agent's stores ({names}).")

    async def catalog(self, volume: str | None = None, host: str | None = None) -> list[BackupRecord]:
        """Newest first, from every store; only `host`'s own backups when given."""
        records = [r for s in self.by_name.values() for r in await s.catalog(volume) if host in (None, r.host)]
        return newest_first(records)

    async def cleanup(self) -> None:
        for s in self.by_name.values():
            await s.cleanup()
