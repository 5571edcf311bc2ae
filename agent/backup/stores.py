"""Where backups live: a Protocol seam and the local directory store under the data dir.

A backup is a data file (a standard tar, maybe compressed) and a JSON record beside it. The record is
written last, after the data file is complete, fsynced and renamed into place: a backup is in the
catalog exactly when its record exists. Anything else left by a crash is removed at start.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import msgspec
import structlog

from contracts import BackupRecord, Compression

from ..errors import AgentError, Corrupt, NotFound, Unavailable

__all__ = ["BackupStore", "LocalStore", "StoreWriter", "Stores", "new_backup_id", "newest_first", "suffix_of"]

log = structlog.get_logger(__name__)

PARTIAL = ".partial"
FOLLOW_CHUNK = 1 << 20
SYNC_EVERY = 64 << 20
# How long the hashing thread waits for the compressor to write more; short against a multi-second backup.
FOLLOW_IDLE_S = 0.005
_SUFFIX = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
_DECODE = msgspec.json.Decoder(BackupRecord)


def suffix_of(compression: Compression) -> str:
    return _SUFFIX[compression]


def new_backup_id(volume: str, now: datetime | None = None) -> str:
    """`<volume>.<UTC time>.<random>`: sorts by time within a volume."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{volume}.{stamp}.{uuid.uuid4().hex[:6]}"


def newest_first(records: Iterable[BackupRecord]) -> list[BackupRecord]:
    """The order every catalog is given in."""
    return sorted(records, key=lambda r: (r.created_at, r.backup_id), reverse=True)


def _backup_id_of(data_file: str) -> str | None:
    """The backup id a data file belongs to (volume names may hold `.tar` themselves)."""
    for suffix in sorted(_SUFFIX.values(), key=len, reverse=True):
        if data_file.endswith(suffix):
            return data_file[: -len(suffix)]
    return None


def _volume_of(backup_id: str) -> str:
    return backup_id.rsplit(".", 2)[0]


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
            raise AgentError(f"The backup file {self.path} does not hold the bytes written to it.")
        os.rename(self.path, self.final)
        if sync:
            _fsync_dir(self.final.parent)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class BackupStore(Protocol):
    """A place for backups, with the catalog kept beside them (it survives restarts)."""

    name: str

    async def begin(self, backup_id: str, volume: str, compression: Compression) -> StoreWriter: ...
    async def commit(self, writer: StoreWriter, record: BackupRecord) -> None: ...
    async def abort(self, writer: StoreWriter) -> None: ...
    async def catalog(self, volume: str | None = None) -> list[BackupRecord]: ...
    async def get(self, backup_id: str) -> BackupRecord: ...
    def fetch(self, record: BackupRecord) -> AbstractAsyncContextManager[Path]:
        """The backup's stored bytes as a local file, for as long as the context lasts, checked against the
        record's size and sha256 (`corrupt` if they differ) before the caller writes anything."""
        ...
    async def forget(self, backup_id: str) -> None: ...
    async def cleanup(self) -> int: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


NO_SPACE = os.strerror(errno.ENOSPC)


def store_errors(exc: OSError, where: Path) -> AgentError:
    """A file system failure of the store, as a sentence."""
    if exc.errno == errno.ENOSPC:
        return Unavailable(f"The backup store at {where} is full (no space left on device); nothing was kept.")
    return AgentError(f"The backup store at {where} failed: {exc.strerror or exc}.")


class LocalStore:
    """Backups as files under `<data dir>/backups/<volume>/`."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, volume: str) -> Path:
        return self.root / volume

    async def begin(self, backup_id: str, volume: str, compression: Compression) -> StoreWriter:
        d = self._dir(volume)
        final = d / f"{backup_id}{suffix_of(compression)}"
        writer = StoreWriter(path=d / f".{backup_id}{PARTIAL}", final=final, location=str(final))
        try:
            d.mkdir(parents=True, exist_ok=True)
            writer.open()
        except OSError as exc:
            raise store_errors(exc, self.root) from exc
        return writer

    async def commit(self, writer: StoreWriter, record: BackupRecord) -> None:
        def commit() -> None:
            writer.finish()
            rec = writer.final.with_name(f"{record.backup_id}.json")
            tmp = rec.with_name(f".{rec.name}{PARTIAL}")
            tmp.write_bytes(msgspec.json.encode(record))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, rec)
            _fsync_dir(rec.parent)

        try:
            await asyncio.to_thread(commit)
        except OSError as exc:
            await self.abort(writer)
            writer.final.unlink(missing_ok=True)
            raise store_errors(exc, self.root) from exc

    async def abort(self, writer: StoreWriter) -> None:
        await asyncio.to_thread(writer.abort)

    async def catalog(self, volume: str | None = None) -> list[BackupRecord]:
        def scan() -> list[BackupRecord]:
            pattern = f"{volume}/*.json" if volume else "*/*.json"
            records = []
            for path in self.root.glob(pattern):
                try:
                    records.append(_DECODE.decode(path.read_bytes()))
                except (OSError, msgspec.DecodeError):
                    log.warning("store.unreadable_record", path=str(path))
            return newest_first(records)

        return await asyncio.to_thread(scan)

    async def get(self, backup_id: str) -> BackupRecord:
        path = self._dir(_volume_of(backup_id)) / f"{backup_id}.json"
        try:
            return _DECODE.decode(await asyncio.to_thread(path.read_bytes))
        except FileNotFoundError:
            raise NotFound(f"Backup {backup_id!r} does not exist in the {self.name} store.") from None
        except OSError as exc:
            raise store_errors(exc, self.root) from exc

    @asynccontextmanager
    async def fetch(self, record: BackupRecord) -> AsyncIterator[Path]:
        path = Path(record.location)
        await _verify_file(record, path)
        yield path

    async def forget(self, backup_id: str) -> None:
        record = await self.get(backup_id)

        def delete() -> None:
            # The record first: from then on the backup is gone from the catalog, whatever happens next.
            (self._dir(record.volume) / f"{backup_id}.json").unlink(missing_ok=True)
            Path(record.location).unlink(missing_ok=True)

        await asyncio.to_thread(delete)

    async def cleanup(self) -> int:
        """Remove what a crash left: partial files, and data files whose record was never written."""

        def clean() -> int:
            removed = 0
            if not self.root.is_dir():
                return 0
            for d in self.root.iterdir():
                if not d.is_dir():
                    continue
                ids = {p.name[: -len(".json")] for p in d.glob("*.json")}
                for p in d.iterdir():
                    orphan = p.name.endswith(PARTIAL) or (
                        not p.name.endswith(".json") and _backup_id_of(p.name) not in ids
                    )
                    if orphan:
                        p.unlink(missing_ok=True)
                        removed += 1
            return removed

        n = await asyncio.to_thread(clean)
        if n:
            log.info("store.cleaned", leftovers=n, root=str(self.root))
        return n


async def _verify_file(record: BackupRecord, path: Path) -> None:
    """The file holds the bytes recorded, or `corrupt`."""

    def digest() -> tuple[int, str]:
        h, n = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(FOLLOW_CHUNK):
                h.update(chunk)
                n += len(chunk)
        return n, h.hexdigest()

    try:
        size, sha = await asyncio.to_thread(digest)
    except FileNotFoundError:
        raise Corrupt(f"The file of backup {record.backup_id!r} is missing from {path}.") from None
    if size != record.stored_size or sha != record.sha256:
        raise Corrupt(
            f"Backup {record.backup_id!r} is corrupt: {size} bytes with sha256 {sha[:12]}…, recorded "
            f"{record.stored_size} bytes with {record.sha256[:12]}…; nothing was written to the volume."
        )


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
