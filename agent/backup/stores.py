"""Where backups live: every store by name, and what all stores share (the writer that hashes, ids, order, the
tar stream a restore reads).

Every store writes a backup's bytes (a file store through a `StoreWriter`, a snapshot store by its tool) and its
record last: a backup is in a catalog exactly when its record exists.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from contracts import BackupRecord, Compression, ResticSnapshot

from ..errors import AgentError, Invalid, NotFound, ToolFailed, Unavailable
from ..typing import BackupStore

__all__ = [
    "NewBackup",
    "StoreWriter",
    "Stored",
    "Stores",
    "TarSource",
    "new_backup_id",
    "newest_first",
    "suffix_of",
]

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


class InOtherStore(NotFound):
    """The shared catalog holds the backup, as one of another store's (`store`): a store's `get` says so."""

    def __init__(self, message: str, store: str) -> None:
        super().__init__(message)
        self.store = store


def store_errors(exc: OSError, where: Path) -> Unavailable:
    """A file system failure of the store, as a sentence; a full store (or quota) is recognised by errno."""
    if exc.errno in FULL:
        why = "over its quota" if exc.errno == errno.EDQUOT else "full (no space left on device)"
        return Unavailable(f"The backup store at {where} is {why}; nothing was kept.")
    return Unavailable(f"The backup store at {where} failed: {exc.strerror or exc}.")


@dataclass(frozen=True)
class NewBackup:
    """What a snapshot store is told of the backup it makes."""

    backup_id: str
    volume: str
    host: str
    trigger: str
    policy: str | None = None
    cmd_id: str | None = None


@dataclass(frozen=True)
class Stored:
    """What a snapshot store kept of a backup: the record's store-specific fields."""

    size: int
    stored_size: int
    sha256: str
    compression: Compression
    location: str
    restic: ResticSnapshot | None = None


@dataclass(frozen=True)
class TarSource:
    """A backup's plaintext tar stream, as processes that write it to their stdout: started once to check its
    members, again to extract them.

    A file store's: age and the decompressor on the stored file (none: the file is the stream). A snapshot
    store's: its tool (`restic dump`), reading nothing. `restore_into` lets a snapshot store restore into a host
    directory with its own tool (what it restores is what the stream holds, checked before), `root` says what the
    volume root's owner and mode are when the stream holds no `./` entry, `check` is the store's own check of what
    the stream does not show, and `error` turns its tool's failure into the agent's error (None: not one it
    knows, so the backup is unreadable).
    """

    argvs: list[list[str]]
    stored: Path | None = None
    env: Mapping[str, str] | None = None
    restore_into: Callable[[Path], Awaitable[None]] | None = None
    root: tuple[int, int, int] | None = None
    """(uid, gid, mode)"""
    check: Callable[[], Awaitable[None]] | None = None
    error: Callable[[ToolFailed], AgentError | None] | None = None


class Stores:
    """Every store the agent writes to, by name; a backup is found by its id alone, whichever holds it."""

    def __init__(self, *stores: BackupStore) -> None:
        self.by_name = {s.name: s for s in stores}

    def _names(self) -> str:
        return ", ".join(self.by_name)

    def __getitem__(self, name: str) -> BackupStore:
        try:
            return self.by_name[name]
        except KeyError:
            raise Invalid(f"This host has no backup store named {name!r}; it has {self._names()} (a host's stores "
                          "besides local and nats are defined in its stores file, --stores).") from None

    async def get(self, backup_id: str) -> tuple[BackupStore, BackupRecord]:
        elsewhere: list[str] = []
        for store in self.by_name.values():
            try:
                return store, await store.get(backup_id)
            except InOtherStore as exc:
                elsewhere.append(exc.store)
            except NotFound:
                continue
        if unknown := [name for name in elsewhere if name not in self.by_name]:
            raise NotFound(f"Backup {backup_id!r} is in store {unknown[0]!r}, which this host does not define; it "
                           f"has {self._names()}. Restore it on a host whose stores file defines {unknown[0]!r} (the "
                           "same repository).")
        raise NotFound(f"Backup {backup_id!r} is in none of this agent's stores ({self._names()}).")

    async def catalog(self, volume: str | None = None, host: str | None = None) -> list[BackupRecord]:
        """Newest first, from every store (asked together); only `host`'s own backups when given."""
        listed = await asyncio.gather(*(s.catalog(volume) for s in self.by_name.values()))
        return newest_first(r for records in listed for r in records if host in (None, r.host))

    async def cleanup(self) -> None:
        for s in self.by_name.values():
            await s.cleanup()
