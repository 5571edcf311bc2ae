"""Restore a backup into a volume, and clone a volume: exact, verified before anything is written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tarfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from contracts import BackupRecord, CloneRequest, CloneResult, RestoreRequest, RestoreResult

from ..causes import Causes
from ..errors import AgentError, Conflict, InUse, NotFound, ToolFailed, Unavailable
from ..locks import KeyedLocks
from ..typing import BackupStore, Engine, EventSink, SnapshotStore
from ..volumes import Volumes, used_by
from .bounds import fits, limit, too_big
from .encryption import AgeIdentity
from .members import check_members
from .pipes import CHUNK, Capped, Counted, Procs, feed, read_chunks, tar_totals, unpack_into
from .progress import Progress
from .stores import Stores, TarSource
from .unfinished import Unfinished, current_cmd_id
from .volume_files import ContainerDir, DataPath, HostDir, host_path, volume_files

__all__ = ["Restores"]

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=msgspec.Struct)


class Restores:
    """restore and clone."""

    def __init__(
        self, engine: Engine, locks: KeyedLocks, causes: Causes, events: EventSink, stores: Stores, volumes: Volumes,
        *, data_path: DataPath, notes: Path | None = None, host: str | None = None, age: AgeIdentity | None = None,
    ) -> None:
        """`host`: this host's id; its own backups in its local store are trusted as they are (None: none is).
        `age`: what this host can decrypt (None: no encrypted backup)."""
        self.engine = engine
        self.locks = locks
        self.causes = causes
        self.events = events
        self.volumes = volumes
        self.stores = stores
        self.data_path = data_path
        self.host = host
        self.age = age if age is not None else AgeIdentity(None)
        self.unfinished = Unfinished(notes)

    async def cleanup(self) -> None:
        """At start: undo what restores cut off by the last run left in their targets."""
        self.unfinished.purge_old()
        for name in self.unfinished.volumes():
            try:
                await self._settle(name, RestoreResult, redelivery=False)
            except AgentError as exc:  # Docker is not back yet: the next restore into it tries again
                log.warning("restore.undo_deferred", volume=name, error=exc.message)

    async def restore(self, req: RestoreRequest) -> RestoreResult:
        store, record = await self.stores.get(req.backup_id)
        events = self.events
        async with self.locks.hold(req.volume):
            await events.event("restore.started", req.volume, backup_id=record.backup_id)
            try:
                self.age.decryptor(record)  # encrypted, and no identity here: refused before anything is touched
                result = await self._settle(req.volume, RestoreResult) or await self._restore(req, store, record)
            except AgentError as exc:
                await events.event("restore.failed", req.volume, backup_id=record.backup_id, error=exc.message)
                raise
            await events.event("restore.completed", req.volume, backup_id=record.backup_id, bytes_done=record.size)
        return result

    @contextlib.asynccontextmanager
    async def _source(self, store: BackupStore, record: BackupRecord) -> AsyncIterator[TarSource]:
        """The backup's tar stream, checked as its store can before a member is read."""
        if isinstance(store, SnapshotStore):
            async with store.open(record) as source:
                yield source
            return
        async with store.fetch(record) as path:  # verified: the bytes recorded, or `corrupt`
            # Encrypted: to a key of this host's, or refused (the first chunk is decrypted, and dropped).
            await self.age.probe(path, record)
            yield TarSource(argvs=self.age.tar_stream(record), stored=path)

    async def _restore(self, req: RestoreRequest, store: BackupStore, record: BackupRecord) -> RestoreResult:
        started = time.monotonic()
        async with self._source(store, record) as source:
            # What it holds, before the target is made or emptied: nothing outside the volume, no devices. Not
            # for what this host wrote into a store no other host writes (its local store: root only): as it found
            # the volume, and costs a pass.
            if store.shared or record.host != self.host:
                if source.check is not None:
                    await source.check()
                await check_members(source, record)
            v, created = await self._target(
                req.volume,
                driver=req.driver or record.volume_driver,
                driver_opts=req.driver_opts or {},
                labels=req.labels if req.labels is not None else record.volume_labels,
            )
            await self._prepare_or_undo(v, created, overwrite=req.overwrite, record=record)
            note = self.unfinished.begin(req.volume, created=created)
            try:
                progress = Progress(self.events, "restore", req.volume, record.backup_id, record.size)
                async with progress.running():
                    await self._extract(v, record, source, progress)
            except BaseException:
                if await asyncio.shield(self._undo(v, created)):
                    self.unfinished.end(req.volume)
                raise
        result = RestoreResult(backup_id=record.backup_id, volume=req.volume, size=record.size,
                               created_volume=created, duration_s=round(time.monotonic() - started, 3))
        self.unfinished.done(req.volume, note, result)
        return result

    async def clone(self, req: CloneRequest) -> CloneResult:
        if req.source == req.target:
            raise Conflict("A volume cannot be cloned onto itself.")
        async with self.locks.hold_all([req.source, req.target]):
            return await self._settle(req.target, CloneResult) or await self._clone(req)

    async def _clone(self, req: CloneRequest) -> CloneResult:
        started = time.monotonic()
        src = await self.engine.volume_inspect(req.source)
        self.volumes.rules.existing_volume(src)  # its content must not come from a host path outside the roots
        src_users = await used_by(self.engine, req.source)
        tgt, created = await self._target(
            req.target, driver=src.get("Driver") or "local", driver_opts=dict(src.get("Options") or {}),
            labels=dict(src.get("Labels") or {}),
        )
        await self._prepare_or_undo(tgt, created, overwrite=False, not_empty=(
            f"Volume {req.target!r} is not empty: a clone goes into a new or empty volume. Name another target, or "
            f"remove it first (volumectl rm {req.target}); to replace its content with {req.source!r}'s, back "
            f"{req.source!r} up and restore that backup into it with overwrite."))
        note = self.unfinished.begin(req.target, created=created)
        try:
            size = await self._copy(src, src_users, tgt)
        except BaseException:
            if await asyncio.shield(self._undo(tgt, created)):
                self.unfinished.end(req.target)
            raise
        result = CloneResult(source=req.source, target=req.target, size=size, created_volume=created,
                             duration_s=round(time.monotonic() - started, 3))
        self.unfinished.done(req.target, note, result)
        return result

    async def _target(
        self, name: str, *, driver: str, driver_opts: dict[str, str], labels: dict[str, str]
    ) -> tuple[dict[str, Any], bool]:
        try:
            v = await self.engine.volume_inspect(name)
            self.volumes.rules.existing_volume(v)  # never written into a host path outside the roots
            if not await self.volumes.remake_cut_short(v, labels):
                return v, False
        except NotFound:
            pass
        spec = {"Name": name, "Driver": driver, "DriverOpts": driver_opts, "Labels": labels}
        return await self.volumes.create_volume(spec), True

    async def _prepare_or_undo(self, v: dict[str, Any], created: bool, *, overwrite: bool,
                               record: BackupRecord | None = None, not_empty: str | None = None) -> None:
        """Make the target ready; if it is refused, only a volume this call created goes again.

        A refused target's content is never touched: undoing writes is only for after we wrote.
        """
        try:
            await self._prepare(v, overwrite=overwrite, record=record, not_empty=not_empty)
        except BaseException:
            if created:
                await asyncio.shield(self._undo(v, created=True))
            raise

    async def _prepare(self, v: dict[str, Any], *, overwrite: bool, record: BackupRecord | None = None,
                       not_empty: str | None = None) -> None:
        """Refuse a target in use, not empty (unless `overwrite`, which empties it; `not_empty`: the refusal's
        sentence), or without room for `record`'s tar stream on its file system."""
        name = v["Name"]
        users = await used_by(self.engine, name)
        running = [u for u in users if u.state == "running"]
        if running:
            named = ", ".join(u.container for u in running)
            raise InUse(f"Volume {name!r} is mounted by running containers ({named}); stop them first.")
        async with volume_files(self.engine, v, [], self.data_path) as files:
            empty = await files.is_empty()
            if not empty and not overwrite:
                raise Conflict(not_empty or f"Volume {name!r} is not empty; restore with overwrite (volumectl restore "
                               "--overwrite) to replace its content.")
            path = host_path(v)  # on either data path: only a directory this host sees says how much is free
            if record is not None and path is not None:
                await fits(record, path, name, emptied=not empty)
            if empty:
                return
            if isinstance(files, HostDir):
                await files.clear()
                return
        if users:
            named = ", ".join(u.container for u in users)
            raise InUse(f"Volume {name!r} is referenced by containers ({named}); remove them to overwrite it.")
        await self._recreate(v)

    async def _recreate(self, v: dict[str, Any]) -> None:
        """Empty a volume the archive API reaches: nothing can be deleted through it, so make it anew."""
        await self.engine.volume_remove(v["Name"], force=False)
        await self.engine.volume_create({"Name": v["Name"], "Driver": v.get("Driver") or "local",
                                         "DriverOpts": v.get("Options") or {}, "Labels": v.get("Labels") or {}})

    async def unpack_to(self, store: BackupStore, record: BackupRecord, directory: Path) -> list[str]:
        """Restore `record` into `directory` (an empty directory of this host's, not a volume: a drill's
        scratch copy) through every check a restore makes; returns what was checked (contracts.verify)."""
        self.age.decryptor(record)  # encrypted, and no identity here: refused before anything is read
        checked = ["stored bytes"]  # a file store's fetch checks them (or `corrupt`); a snapshot store's tool does
        async with self._source(store, record) as source:
            if record.encrypted_to:
                checked.append("decryption")
            if store.shared or record.host != self.host:
                if source.check is not None:
                    await source.check()
                await check_members(source, record)
                checked.append("members")
            await fits(record, directory, str(directory), emptied=False, place="the drill's scratch directory")
            # Never published: a drill's progress is not a restore's.
            quiet = Progress(self.events, "verify", record.volume, record.backup_id, record.size)
            await self._unpack_files(HostDir(directory), record, source, quiet)
            checked.append("extraction")
        return checked

    async def _extract(self, v: dict[str, Any], record: BackupRecord, source: TarSource, progress: Progress) -> None:
        """The tar stream (decrypted and decompressed by processes in the pipe: plaintext never touches a file, or
        written by the store's tool) extracted into the volume: at most the tar stream the record states
        (`bounds.py`), else `corrupt` (the caller undoes what was written). A store that restores with its own
        tool does so into a host directory (what it writes is what the checked stream holds)."""
        try:
            await self._unpack(v, record, source, progress)
        except ToolFailed as exc:
            known = source.error(exc) if source.error is not None else None
            if known is not None:
                raise known from exc
            raise

    async def _unpack(self, v: dict[str, Any], record: BackupRecord, source: TarSource, progress: Progress) -> None:
        async with volume_files(self.engine, v, [], self.data_path) as files:
            await self._unpack_files(files, record, source, progress)

    async def _unpack_files(self, files: HostDir | ContainerDir, record: BackupRecord, source: TarSource,
                            progress: Progress) -> None:
        most = limit(record)
        if isinstance(files, HostDir) and source.restore_into is not None:
            await source.restore_into(files.path)
            if source.root is not None:
                await asyncio.to_thread(_set_root, files.path, source.root)
            progress.add(record.size)
            return
        procs = Procs()
        try:
            with open(source.stored, "rb") if source.stored is not None else contextlib.nullcontext() as stored:  # noqa: ASYNC230
                if isinstance(files, HostDir):
                    pumped = await unpack_into(procs, source.argvs, stored, files.extract_argv(), most,
                                               stdout=asyncio.subprocess.DEVNULL, env=source.env)
                    try:
                        moved = await asyncio.shield(pumped)
                    except asyncio.CancelledError:
                        await procs.reap()  # the pump ends with them, and closes its pipes
                        await pumped
                        raise
                    if moved > most:
                        raise too_big(record, written=True)
                    await procs.wait()
                    if source.root is not None:
                        await asyncio.to_thread(_set_root, files.path, source.root)
                    progress.add(record.stored_size)
                    return
                assert isinstance(files, ContainerDir)
                if source.argvs:
                    feeds = stored if stored is not None else asyncio.subprocess.DEVNULL
                    await procs.chain(source.argvs, stdin=feeds, stdout=asyncio.subprocess.PIPE, env=source.env)
                    assert procs.last.stdout is not None
                    capped = Capped(read_chunks(procs.last.stdout, progress.add), most)
                else:
                    capped = Capped(_file_chunks(stored, progress), most)
                try:
                    await files.write(_rooted(capped, source.root) if source.root is not None else capped)
                except AgentError as exc:
                    if capped.over:  # Docker refuses the stream cut short: the bound is the cause
                        raise too_big(record, written=True) from exc
                    raise
                if capped.over:
                    raise too_big(record, written=True)
                if source.argvs:
                    await procs.wait()
        except BaseException:
            await procs.reap()
            raise

    async def _copy(self, src: dict[str, Any], src_users: list[Any], tgt: dict[str, Any]) -> int:
        async with volume_files(self.engine, src, src_users, self.data_path) as a, \
                volume_files(self.engine, tgt, [], self.data_path) as b:
            procs = Procs()
            try:
                if isinstance(a, HostDir) and isinstance(b, HostDir):
                    await procs.chain([a.create_argv(), b.extract_argv()], stdin=asyncio.subprocess.DEVNULL,
                                      stdout=asyncio.subprocess.DEVNULL)
                    return tar_totals((await procs.wait())[0]) or 0
                if isinstance(a, HostDir):
                    assert isinstance(b, ContainerDir)
                    await procs.chain([a.create_argv()], stdin=asyncio.subprocess.DEVNULL,
                                      stdout=asyncio.subprocess.PIPE)
                    assert procs.last.stdout is not None
                    await b.write(read_chunks(procs.last.stdout))
                    return tar_totals((await procs.wait())[0]) or 0
                assert isinstance(a, ContainerDir)
                counted = Counted(a.read())
                if isinstance(b, HostDir):
                    await procs.chain([b.extract_argv()], stdin=asyncio.subprocess.PIPE,
                                      stdout=asyncio.subprocess.DEVNULL)
                    await feed(procs.first, counted)
                    await procs.wait()
                else:
                    await b.write(counted)
                return counted.n
            except BaseException:
                await procs.reap()
                raise

    async def _undo(self, v: dict[str, Any], created: bool) -> bool:
        """No partial state: a volume we made goes again; one that was there is left empty, as it was.
        False if that failed (Docker went away too): the note stays, and the next try undoes it."""
        try:
            if created:
                self.causes.note("volume.removed", v["Name"])
                await self.engine.volume_remove(v["Name"], force=False)
                return True
            async with volume_files(self.engine, v, [], self.data_path) as files:
                if isinstance(files, HostDir):
                    await files.clear()
                    return True
            await self._recreate(v)  # after the helper container that mounted it is gone
        except AgentError:
            log.exception("restore.undo_failed", volume=v["Name"])
            return False
        return True

    async def _exists(self, name: str) -> bool:
        try:
            await self.engine.volume_inspect(name)
        except NotFound:
            return False
        return True

    async def _settle(self, name: str, kind: type[R], *, redelivery: bool = True) -> R | None:
        """Deal with what an earlier restore or clone into `name` left (see `Unfinished`). Its result if it was
        this command, finished, and delivered again before its outcome was recorded; else None, once what it
        left half-written is undone."""
        note = self.unfinished.get(name)
        if note is None:
            return None
        if note.result is not None:
            mine = redelivery and note.cmd_id is not None and note.cmd_id == current_cmd_id()
            if mine and await self._exists(name):
                log.info("restore.already_done", volume=name)
                return msgspec.convert(note.result, type=kind)
            if not redelivery:
                return None  # kept for a redelivery of its command
            self.unfinished.end(name)
            return None
        log.warning("restore.undoing_interrupted", volume=name, created=note.created)
        try:
            v = await self.engine.volume_inspect(name)
        except NotFound:
            self.unfinished.end(name)
            return None
        if not await self._undo(v, note.created):
            raise Unavailable(f"Volume {name!r} holds part of an interrupted restore, which cannot be undone yet.")
        self.unfinished.end(name)
        return None


def _set_root(path: Path, root: tuple[int, int, int]) -> None:
    """The volume root's owner and mode, as the backup found them (a stream without a `./` entry)."""
    uid, gid, mode = root
    os.chown(path, uid, gid)
    os.chmod(path, stat.S_IMODE(mode))


async def _rooted(chunks: AsyncIterable[bytes], root: tuple[int, int, int]) -> AsyncIterator[bytes]:
    """`chunks` after a `./` entry with the root's owner and mode (what `ContainerDir.write` gives the mount)."""
    info = tarfile.TarInfo(".")
    info.type = tarfile.DIRTYPE
    info.uid, info.gid, info.mode, info.mtime = root[0], root[1], stat.S_IMODE(root[2]), int(time.time())
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    async for chunk in chunks:
        yield chunk


async def _file_chunks(f: Any, progress: Progress) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(f.read, CHUNK):
        progress.add(len(chunk))
        yield chunk
