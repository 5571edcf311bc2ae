"""The local store: backups as files under `<data dir>/backups/<volume>/`, each beside its record.

A backup is written to a `.partial` file, fsynced, renamed into place; its record is written last, the same
way. A backup exists exactly when its record exists. Anything else left by a crash is removed at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import structlog

from contracts import BackupRecord, Compression
from contracts.bounds import BoundedDecoder

from ..errors import Corrupt, NotFound
from ..private_files import open_private, private_dir
from .stores import FOLLOW_CHUNK, PARTIAL, StoreWriter, backup_id_of, fsync_dir, newest_first, store_errors, suffix_of

__all__ = ["LocalStore"]

log = structlog.get_logger(__name__)

_DECODE = BoundedDecoder(BackupRecord, what="The record")


def _volume_of(backup_id: str) -> str:
    return backup_id.rsplit(".", 2)[0]


class LocalStore:
    """Backups as files under `<data dir>/backups/<volume>/`."""

    name = "local"
    shared = False
    """Only this agent (root) writes under its data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, volume: str) -> Path:
        return self.root / volume

    async def begin(
        self, backup_id: str, volume: str, compression: Compression, *, encrypted: bool = False
    ) -> StoreWriter:
        d = self._dir(volume)
        final = d / f"{backup_id}{suffix_of(compression, encrypted=encrypted)}"
        writer = StoreWriter(path=d / f".{backup_id}{PARTIAL}", final=final, location=str(final))
        try:
            private_dir(d)
            writer.open()
        except OSError as exc:
            raise store_errors(exc, self.root) from exc
        return writer

    async def commit(self, writer: StoreWriter, record: BackupRecord) -> None:
        def commit() -> None:
            writer.finish()
            rec = writer.final.with_name(f"{record.backup_id}.json")
            tmp = rec.with_name(f".{rec.name}{PARTIAL}")
            with open_private(tmp) as f:
                f.write(msgspec.json.encode(record))
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, rec)
            fsync_dir(rec.parent)

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
                        not p.name.endswith(".json") and backup_id_of(p.name) not in ids
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
