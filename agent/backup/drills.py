"""Restore drills (contracts.verify): a backup restored into a scratch directory, digested, compared with the
digest taken when it was made, and removed; the result kept per volume, counted and notified.

The scratch directory is `<data dir>/drills/<random>` (0700, under the 0700 data dir): never a volume, never
seen by a container. It goes whatever the outcome, and what a killed agent left there goes at the next start.
Everything between the store and the scratch tree is a restore's own path (`Restores.unpack_to`): the store's
check of the stored bytes, decryption, the member check of another host's backup, the bound on the tar stream.
So a drill proves what a restore would do, for any store the agent has.

What is compared, and why it catches a corrupted backup: the record's `content_digest` is the `digest` op's
digest of the tar stream as it was written (`content.py`): every entry's path, type, mode, owner, size,
content sha256, mtime and link target. The scratch tree, extracted by GNU tar, is digested the same way. A flipped
or missing byte anywhere between the two (in the stored file, in a store that does not check its bytes, in
decompression, decryption or extraction) changes a content sha256 or an entry, so the digests differ; a
truncated backup fails earlier (the store's size check, or tar's end of data).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import structlog

from contracts import BackupRecord, LastVerify, VerifyRequest, VerifyResult

from ..errors import AgentError, Corrupt
from ..private_files import open_private, private_dir
from ..typing import BackupStore, Metrics, Notifier
from .digest import files_digest
from .restore import Restores
from .stores import Stores
from .volume_files import HostDir

__all__ = ["Drills", "VerifyLog"]

log = structlog.get_logger(__name__)

_DECODER = msgspec.json.Decoder(dict[str, LastVerify])


class VerifyLog:
    """Each volume's last drill here, kept in `<data dir>/verified.json` (rewritten at each drill: they are rare)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.last: dict[str, LastVerify] = {}

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            self.last = _DECODER.decode(self.path.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("verify.log_unreadable", file=str(self.path), error=str(exc))

    def get(self, volume: str) -> LastVerify | None:
        return self.last.get(volume)

    def put(self, volume: str, entry: LastVerify) -> LastVerify | None:
        """Record `entry`; returns the one it replaces."""
        before, self.last[volume] = self.last.get(volume), entry
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            try:
                private_dir(self.path.parent)
                with open_private(tmp) as f:
                    f.write(msgspec.json.encode(self.last))
                os.replace(tmp, self.path)
            except OSError as exc:  # kept in memory; the next drill writes it again
                log.warning("verify.log_not_saved", file=str(self.path), error=exc.strerror or str(exc))
        return before


class Drills:
    """The `verify` op, and the drills a policy's `verify` schedule runs (`drill`)."""

    def __init__(
        self, stores: Stores, restores: Restores, *, scratch: Path, verified: VerifyLog,
        metrics: Metrics | None = None, notifier: Notifier | None = None, on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.stores = stores
        self.restores = restores
        self.scratch = scratch
        self.verified = verified
        self.metrics = metrics
        self.notifier = notifier
        self.on_change = on_change

    async def cleanup(self) -> None:
        """At start: what drills cut off by the last run left."""
        if self.scratch.exists():
            await asyncio.to_thread(shutil.rmtree, self.scratch, True)

    async def verify(self, req: VerifyRequest) -> VerifyResult:
        store, record = await self.stores.get(req.backup_id)
        return await self.drill(store, record)

    async def drill(self, store: BackupStore, record: BackupRecord, *, policy: str | None = None) -> VerifyResult:
        """Restore `record` into scratch, compare, remove; the result is recorded, counted and (when it fails, or
        passes again after failing) notified. A failure raises its error, with what failed said."""
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(backup_id=record.backup_id, volume=record.volume):
            try:
                result = await self._drill(store, record, started)
            except AgentError as exc:
                await self._record(record, policy, time.monotonic() - started, error=exc.message)
                raise
            except Exception:
                log.exception("verify.crashed")
                await self._record(record, policy, time.monotonic() - started,
                                   error="the agent failed unexpectedly during the drill (see its log)")
                raise
            await self._record(record, policy, result.duration_s, error=None)
            log.info("verify.passed", seconds=result.duration_s, checked=result.checked)
        return result

    async def _drill(self, store: BackupStore, record: BackupRecord, started: float) -> VerifyResult:
        where = self.scratch / uuid.uuid4().hex
        await asyncio.to_thread(private_dir, where)
        try:
            checked = await self.restores.unpack_to(store, record, where)
            sha, entries, total = await files_digest(HostDir(where))
        finally:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, where, True))
        if record.files is not None and entries != record.files:
            raise Corrupt(
                f"The restore drill of backup {record.backup_id!r} restored {entries} entries, not the "
                f"{record.files} it held when it was made: the backup does not restore what it held.")
        if record.content_digest is not None:
            if sha != record.content_digest:
                raise Corrupt(
                    f"The restore drill of backup {record.backup_id!r} restored a tree whose content digest "
                    f"({sha[:16]}...) differs from the one taken when it was made ({record.content_digest[:16]}...): "
                    "the backup does not restore what it held. Restore another backup of the volume.")
            checked.append("content digest")
        return VerifyResult(backup_id=record.backup_id, volume=record.volume,
                            verified_at=datetime.now(UTC).isoformat(), duration_s=round(time.monotonic() - started, 3),
                            checked=checked, content_digest=sha, files=entries, bytes=total)

    async def _record(self, record: BackupRecord, policy: str | None, seconds: float, *, error: str | None) -> None:
        entry = LastVerify(backup_id=record.backup_id, verified_at=datetime.now(UTC).isoformat(), ok=error is None,
                           error=error, policy=policy)
        before = self.verified.put(record.volume, entry)
        self.on_change()
        if self.metrics is not None:
            self.metrics.verify_finished(record.volume, ok=error is None, seconds=seconds)
        if self.notifier is None:
            return
        with contextlib.suppress(Exception):  # a notifier never raises; a fake might
            if error is not None and (before is None or before.ok):  # told once, when it starts failing
                await self.notifier.verify_failed(record.volume, record.backup_id, error, policy=policy)
            elif error is None and before is not None and not before.ok:
                await self.notifier.verify_recovered(record.volume, record.backup_id, policy=policy)
