"""The shared backup store: a JetStream Object Store every agent reads, with the catalog in KV.

A backup is its object `<backup_id>` in the bucket `<prefix>_backups` and its record in the KV bucket
`<prefix>_backup_catalog`. The record is written last, after the object is complete and its digest
checked: a backup is in the catalog exactly when its record exists, as in the local store.

The bytes go through a spool file under the data dir: the backup pipeline writes it (hashing as it goes,
as for the local store), then nats-py uploads it in chunks as large as the server accepts (its default
128 KiB chunk costs one round trip each). A restore downloads into a spool file with `writeinto` (without
it nats-py joins the chunks in memory, quadratically) and checks the recorded sha256 before extracting.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.js.errors
import structlog
from nats.js.api import ObjectMeta, ObjectMetaOptions

from contracts import BackupRecord, Compression

from .bus import Bus, nats_errors
from .errors import Corrupt, NotFound
from .store import PARTIAL, StoreWriter, store_errors, suffix_of

__all__ = ["NatsStore"]

log = structlog.get_logger(__name__)

MAX_CHUNK = 8 << 20
_DECODE = msgspec.json.Decoder(BackupRecord)


def catalog_key(backup_id: str) -> str:
    """KV keys are NATS subject tokens; a volume name may hold `..`, so the id is encoded."""
    return base64.urlsafe_b64encode(backup_id.encode()).decode()


class NatsStore:
    """`BackupStore` in JetStream: every host's backups, restorable anywhere."""

    name = "nats"

    def __init__(self, bus: Bus, spool: Path) -> None:
        self.bus = bus
        self.spool = spool

    def _location(self, backup_id: str) -> str:
        return f"nats://{self.bus.backups_bucket}/{backup_id}"

    async def begin(self, backup_id: str, volume: str, compression: Compression) -> StoreWriter:
        final = self.spool / f"{backup_id}{suffix_of(compression)}"
        writer = StoreWriter(path=self.spool / f".{backup_id}{PARTIAL}", final=final,
                             location=self._location(backup_id))
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
            writer.open()
        except OSError as exc:
            raise store_errors(exc, self.spool) from exc
        return writer

    async def commit(self, writer: StoreWriter, record: BackupRecord) -> None:
        try:
            await asyncio.to_thread(writer.finish, sync=False)
        except OSError as exc:
            raise store_errors(exc, self.spool) from exc
        try:
            await self._upload(writer.final, record)
        finally:
            writer.final.unlink(missing_ok=True)

    async def _upload(self, path: Path, record: BackupRecord) -> None:
        obj = await self.bus.backups_obj()
        chunk = max(64 << 10, min(MAX_CHUNK, self.bus.nc.max_payload - 1024))
        meta = ObjectMeta(name=record.backup_id, description=f"volume {record.volume} on {record.host}",
                          options=ObjectMetaOptions(max_chunk_size=chunk))
        try:
            async with nats_errors(f"uploading backup {record.backup_id} to the shared store"):
                with open(path, "rb") as f:  # noqa: ASYNC230 - nats-py reads it in a thread
                    info = await obj.put(record.backup_id, f, meta=meta)
                digest = _hex_digest(info.digest)
                if info.size != record.stored_size or digest != record.sha256:
                    raise Corrupt(f"The shared store holds {info.size} bytes with sha256 {digest[:12]}… for "
                                  f"backup {record.backup_id}, not the {record.stored_size} written; not kept.")
                await self.bus.catalog_kv().put(catalog_key(record.backup_id), msgspec.json.encode(record))
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the object without a record is unlisted anyway
                await asyncio.shield(obj.delete(record.backup_id))
            raise

    async def abort(self, writer: StoreWriter) -> None:
        await asyncio.to_thread(writer.abort)
        writer.final.unlink(missing_ok=True)

    async def catalog(self, volume: str | None = None) -> list[BackupRecord]:
        records = []
        async with nats_errors("reading the shared backup catalog"):
            watcher = await self.bus.catalog_kv().watchall(ignore_deletes=True)
            try:
                async for entry in watcher:
                    if entry is None:
                        break
                    if not entry.value:
                        continue
                    try:
                        r = _DECODE.decode(entry.value)
                    except msgspec.DecodeError:
                        log.warning("objstore.unreadable_record", key=entry.key)
                        continue
                    if volume in (None, r.volume):
                        records.append(r)
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
        return sorted(records, key=lambda r: (r.created_at, r.backup_id), reverse=True)

    async def get(self, backup_id: str) -> BackupRecord:
        async with nats_errors("reading the shared backup catalog"):
            try:
                entry = await self.bus.catalog_kv().get(catalog_key(backup_id))
            except nats.js.errors.KeyNotFoundError:
                raise NotFound(f"Backup {backup_id!r} does not exist in the nats store.") from None
        if not entry.value:
            raise NotFound(f"Backup {backup_id!r} does not exist in the nats store.")
        return _DECODE.decode(entry.value)

    @contextlib.asynccontextmanager
    async def fetch(self, record: BackupRecord) -> AsyncIterator[Path]:
        path = self.spool / f".{record.backup_id}.{os.urandom(3).hex()}.fetch{PARTIAL}"
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
            obj = await self.bus.backups_obj()
            async with nats_errors(f"downloading backup {record.backup_id} from the shared store"):
                with open(path, "wb") as f:  # noqa: ASYNC230 - nats-py writes it in a thread
                    try:
                        await obj.get(record.backup_id, writeinto=f)
                    except nats.js.errors.ObjectNotFoundError:
                        raise Corrupt(f"The data of backup {record.backup_id!r} is missing from the shared "
                                      "store; nothing was written to the volume.") from None
                    except nats.js.errors.DigestMismatchError:
                        raise Corrupt(f"Backup {record.backup_id!r} is corrupt in the shared store (digest "
                                      "mismatch); nothing was written to the volume.") from None
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise store_errors(exc, self.spool) from exc
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    async def forget(self, backup_id: str) -> None:
        await self.get(backup_id)
        obj = await self.bus.backups_obj()
        async with nats_errors(f"deleting backup {backup_id} from the shared store"):
            # The record first: from then on the backup is gone from the catalog, whatever happens next.
            await self.bus.catalog_kv().delete(catalog_key(backup_id))
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await obj.delete(backup_id)

    async def cleanup(self) -> int:
        """Spool files a crash left behind (objects without a record are never listed)."""

        def clean() -> int:
            if not self.spool.is_dir():
                return 0
            n = 0
            for p in self.spool.iterdir():
                p.unlink(missing_ok=True)
                n += 1
            return n

        return await asyncio.to_thread(clean)


def _hex_digest(digest: str | None) -> str:
    """nats-py's `SHA-256=<base64url>` as hex."""
    if not digest:
        return ""
    try:
        return base64.urlsafe_b64decode(digest.split("=", 1)[1] + "==").hex()
    except (IndexError, binascii.Error, ValueError):
        return ""


