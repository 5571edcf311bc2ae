"""Backups of a volume: made consistent (stop, hooks), streamed, hashed, stored atomically; listed, forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from contracts import (
    BackupRecord,
    BackupRequest,
    BackupsRequest,
    BackupsResult,
    Compression,
    ContainerRef,
    ForgetRequest,
    ForgetResult,
    ResticSnapshot,
)

from ..causes import Causes
from ..errors import AgentError, Internal, Invalid, ToolFailed
from ..locks import KeyedLocks
from ..typing import Engine, EventSink, FileStore, SnapshotStore
from ..volumes import used_by
from .content import Content, StreamDigest
from .encryption import encryptor
from .hooks import POST_HOOK, PRE_HOOK, restart, run_hooks, stop_running
from .observed import BackupObserver, observed
from .pipes import Counted, Procs, big_pipe, compressor, feed, tar_totals
from .progress import Progress
from .stores import NewBackup, Stores, StoreWriter, new_backup_id
from .unfinished import current_cmd_id
from .volume_files import ContainerDir, DataPath, HostDir, volume_files

__all__ = ["Backups"]

log = structlog.get_logger(__name__)


async def _wait(procs: Procs, writer: StoreWriter) -> list[str]:
    """Wait for the pipeline; a full store is the store's error, not the compressor's."""
    try:
        return await procs.wait("writing the backup")
    except ToolFailed:
        await asyncio.to_thread(writer.check_space)  # raises the store's own error when it is full
        raise


@dataclass(frozen=True)
class _Made:
    """What a backup's record says whatever the store: who made it, of what, when, how."""

    backup_id: str
    volume: str
    host: str
    trigger: str
    store: str
    created_at: str
    started: float
    v: dict[str, Any]
    stopped: list[str]
    container: str | None
    policy: str | None
    encrypted_to: list[str]

    def record(self, *, size: int, stored_size: int, sha256: str, compression: Compression, location: str,
               restic: ResticSnapshot | None = None, content: Content | None = None) -> BackupRecord:
        return BackupRecord(
            backup_id=self.backup_id, volume=self.volume, host=self.host, trigger=self.trigger,  # type: ignore[arg-type]
            size=size, stored_size=stored_size, sha256=sha256, compression=compression, store=self.store,
            location=location, created_at=self.created_at, duration_s=round(time.monotonic() - self.started, 3),
            stopped_containers=self.stopped, volume_driver=self.v.get("Driver") or "local",
            volume_labels=dict(self.v.get("Labels") or {}), container=self.container, policy=self.policy,
            encrypted_to=self.encrypted_to, restic=restic,
            files=content.files if content else None, content_digest=content.digest if content else None,
        )


class Backups:
    """backup, backups and forget; `on_backup`/`on_forget` are told of every backup made or deleted, `observer`
    (metrics, notifications) of every backup made or failed."""

    def __init__(
        self, engine: Engine, locks: KeyedLocks, causes: Causes, events: EventSink, stores: Stores, *, host: str,
        data_path: DataPath, on_backup: Callable[[BackupRecord], None], on_forget: Callable[[BackupRecord], None],
        max_running: int = 0, observer: BackupObserver | None = None,
        estimate: Callable[[str], int | None] | None = None,
    ) -> None:
        """`max_running`: backups that may run at once (`--max-backups`; 0: no limit); the others queue;
        `estimate`: a volume's expected tar size, if known (progress events say it)."""
        self.estimate = estimate
        self.engine = engine
        self.locks = locks
        self.causes = causes
        self.events = events
        self.stores = stores
        self.host = host
        self.data_path = data_path
        self.on_backup = on_backup
        self.on_forget = on_forget
        self.observer = observer
        self._slots = asyncio.Semaphore(max_running) if max_running > 0 else None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the `max_running` backups; taken before the volume's lock, never while holding one."""
        async with self._slots if self._slots is not None else contextlib.nullcontext():
            yield

    async def backup(self, req: BackupRequest) -> BackupRecord:
        async with self.slot(), self.locks.hold(req.volume):
            return await self.backup_locked(req)

    async def final(self, volume: str) -> BackupRecord:
        """The backup `remove` makes first with `backup_first` (the caller holds the lock)."""
        return await self.backup_locked(BackupRequest(volume=volume))

    async def backups(self, req: BackupsRequest) -> BackupsResult:
        records = await self.stores.catalog(req.volume, self.host if req.made_here else None)
        return BackupsResult(backups=records)

    async def forget(self, req: ForgetRequest) -> ForgetResult:
        store, record = await self.stores.get(req.backup_id)
        await store.forget(req.backup_id)
        self.on_forget(record)
        return ForgetResult(backup_id=req.backup_id, forgotten=True)

    @observed
    async def backup_locked(
        self, req: BackupRequest, *, trigger: str = "request", container: str | None = None,
        policy: str | None = None,
    ) -> BackupRecord:
        """Back up `req.volume`; the caller holds its lock."""
        v = await self.engine.volume_inspect(req.volume)
        users = await used_by(self.engine, req.volume)
        store = self.stores[req.store]
        encrypt = encryptor(req.encrypt_to, req.volume)  # bad recipients, or no age here: before anything is written
        backup_id = new_backup_id(req.volume)
        started, created_at = time.monotonic(), datetime.now(UTC).isoformat()
        events = self.events
        with structlog.contextvars.bound_contextvars(backup_id=backup_id):
            await events.event("backup.started", req.volume, backup_id=backup_id, container=container)
            stopped: list[ContainerRef] = []
            warnings: list[str] = []
            try:
                await run_hooks(self.engine, users, PRE_HOOK, must_succeed=True)
                if req.stop_containers:
                    stopped = await stop_running(self.engine, self.causes, users)
                made = _Made(backup_id=backup_id, volume=req.volume, host=self.host, trigger=trigger,
                             store=store.name, created_at=created_at, started=started, v=v,
                             stopped=[u.container for u in stopped], container=container, policy=policy,
                             encrypted_to=list(dict.fromkeys(req.encrypt_to)))
                progress = Progress(self.events, "backup", req.volume, backup_id,
                                    self.estimate(req.volume) if self.estimate else None)
                still_running = [u for u in users if u not in stopped]
                if isinstance(store, SnapshotStore):
                    record = await self._snapshot(store, made, still_running, progress)
                else:
                    record = await self._file(store, made, req.compression, encrypt, still_running, progress)
            except AgentError as exc:
                await events.event("backup.failed", req.volume, backup_id=backup_id, error=exc.message,
                                   container=container)
                raise
            finally:
                await asyncio.shield(restart(self.engine, stopped))
                warnings = await asyncio.shield(run_hooks(
                    self.engine, [u for u in users if u.state == "running"], POST_HOOK, must_succeed=False))
            self.on_backup(record)
            await events.event("backup.completed", req.volume, backup_id=backup_id, bytes_done=record.size,
                               container=container)
            log.info("backup.completed", size=record.size, stored=record.stored_size, seconds=record.duration_s,
                     store=record.store)
        if req.keep is not None:
            await self._keep(record, req.keep)
        # In the reply only: the catalog's record was written before the post hooks ran.
        return msgspec.structs.replace(record, warnings=warnings) if warnings else record

    async def _file(self, store: FileStore, made: _Made, compression: Compression, encrypt: list[str] | None,
                    users: list[ContainerRef], progress: Progress) -> BackupRecord:
        """Into a file store: the stream written through its writer (hashed as it goes), then the record."""
        writer = await store.begin(made.backup_id, made.volume, compression, encrypted=encrypt is not None)
        try:
            async with progress.running():
                size, content = await self._write(made.v, users, compression, encrypt, writer, progress)
            record = made.record(size=size, stored_size=writer.written, sha256=writer.sha256.hexdigest(),
                                 compression=compression, location=writer.location, content=content)
            await store.commit(writer, record)
        except BaseException:
            await asyncio.shield(store.abort(writer))
            raise
        return record

    async def _snapshot(self, store: SnapshotStore, made: _Made, users: list[ContainerRef], progress: Progress
                        ) -> BackupRecord:
        """Into a snapshot store (restic): its tool reads the volume's files, then the record is kept."""
        if made.encrypted_to:
            raise Invalid(f"Store {store.name!r} encrypts with its own key (restic's repository password); "
                          "encrypt_to (age) is for the local and nats stores. Nothing was written.")
        new = NewBackup(backup_id=made.backup_id, volume=made.volume, host=made.host, trigger=made.trigger,
                        policy=made.policy, cmd_id=current_cmd_id())
        async with progress.running(), volume_files(self.engine, made.v, users, self.data_path) as files:
            stored = await store.snapshot(files, new, progress)
        try:
            record = made.record(size=stored.size, stored_size=stored.stored_size, sha256=stored.sha256,
                                 compression=stored.compression, location=stored.location, restic=stored.restic)
            await store.record(record)
        except BaseException:
            await asyncio.shield(store.discard(stored))
            raise
        return record

    async def _write(
        self, v: dict[str, Any], users: list[ContainerRef], compression: Compression, encrypt: list[str] | None,
        writer: StoreWriter, progress: Progress,
    ) -> tuple[int, Content | None]:
        """Stream the volume's tar through the compressor (and age, to encrypt) into the store; returns the tar's
        size and its content digest (`content.py`).

        The last process writes the store file itself, as `tar | zstd | age > file` would; a thread follows the
        file as it grows and hashes it. Python stays out of the data path and the event loop stays free.
        """
        packers = [argv for argv in (compressor(compression), encrypt) if argv]
        content = StreamDigest()
        try:
            size = await self._stream(v, users, packers, writer, progress, content)
        except BaseException:
            await asyncio.shield(content.abort())
            raise
        return size, await content.result()

    async def _stream(
        self, v: dict[str, Any], users: list[ContainerRef], packers: list[list[str]], writer: StoreWriter,
        progress: Progress, content: StreamDigest,
    ) -> int:
        async with volume_files(self.engine, v, users, self.data_path) as files:
            if isinstance(files, ContainerDir) and not packers:
                counted = Counted(files.read())
                async for chunk in counted:
                    await asyncio.to_thread(writer.write, chunk)
                    await content.write(chunk)
                    progress.add(len(chunk))
                return counted.n
            procs = Procs()
            done = threading.Event()
            following = asyncio.create_task(asyncio.to_thread(writer.follow, done, progress.add))
            try:
                if isinstance(files, HostDir):
                    size = await self._tar_through(files, packers, writer, procs, content)
                else:
                    counted = Counted(files.read())
                    await procs.chain(packers, stdin=asyncio.subprocess.PIPE, stdout=writer.fd)
                    await feed(procs.first, content.copying(aiter(counted)))
                    await _wait(procs, writer)
                    size = counted.n
            except BaseException:
                await procs.reap()
                raise
            finally:
                done.set()
                await asyncio.shield(following)
            return size

    async def _tar_through(self, files: HostDir, packers: list[list[str]], writer: StoreWriter, procs: Procs,
                           content: StreamDigest) -> int:
        """tar, then the packers into the store file; between them the kernel moves the stream and the digest
        gets its copy (`StreamDigest.pump`). The tar stream's size, as tar counted it."""
        src, tar_out = big_pipe()
        try:
            await procs.chain([files.create_argv()], stdin=asyncio.subprocess.DEVNULL, stdout=tar_out)
        except BaseException:
            os.close(src)
            raise
        finally:
            os.close(tar_out)
        dst = -1
        try:
            if packers:
                packer_in, dst = big_pipe()
                try:
                    await procs.chain(packers, stdin=packer_in, stdout=writer.fd)
                finally:
                    os.close(packer_in)
            else:
                dst = os.dup(writer.fd)
        except BaseException:
            for fd in (src, dst):
                if fd >= 0:
                    os.close(fd)
            raise
        pumped = content.pump(src, dst)
        try:
            errs = await _wait(procs, writer)
        except BaseException:
            await procs.reap()  # the pump ends with them
            await asyncio.shield(pumped)
            raise
        await pumped
        size = tar_totals(errs[0])
        if size is None:
            raise Internal("tar did not report the size of the archive it wrote.")
        return size

    async def _keep(self, made: BackupRecord, keep: int) -> None:
        """Keep the newest `keep` backups this host made of the volume in that store, the one just `made` always
        among them (whatever the clocks say), and never another host's."""
        store = self.stores[made.store]
        others = [r for r in await store.catalog(made.volume) if r.host == self.host and r.backup_id != made.backup_id]
        for old in others[keep - 1:]:
            await store.forget(old.backup_id)
            self.on_forget(old)
            log.info("backup.pruned", old=old.backup_id)
