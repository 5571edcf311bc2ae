"""A restic repository as a backup store: incremental, deduplicated, anywhere restic reaches (a path, REST, SFTP,
S3, rclone), shared by every host that defines it.

Backup (`snapshot`), by Debian's restic as a process (`agent/backup/restic.py`), never reimplemented:
- a volume whose directory this host sees: `restic backup --json .` in that directory, `--host <host id>`, tags
  `volume=`, `backup=`, `trigger=`, `policy=`, `cmd=`, and `--parent` the volume's previous snapshot made here in
  this store (from the agent's records), so restic does not read unchanged files again;
- a volume reached through Docker's archive API: its tar stream into `restic backup --stdin`.
restic's status lines become `backup.progress` events, its summary the record's `restic` field. Exit 3 (files
that could not be read) fails the backup: the incomplete snapshot is forgotten again.

The records are kept by the agent in the shared catalog (`nats_catalog`), under the host that made them, as the
nats store's are: listing never runs restic, and any host whose stores file defines the store restores any host's
backup by its id. The record names the repository by its id (restic's `cat config`): a host whose store of that
name is another repository refuses it.

Restore goes through the checks every restore does (`restore.py`): a snapshot another host made is data, not
trust. Its tar stream is `restic dump --archive tar` (one file's for a `tar` snapshot), whose members GNU tar lists
and the agent checks, bounded as every restore is; a `directory` snapshot's nodes are listed too (`restic ls`):
devices and sockets, which `dump` leaves out and `restic restore` would make, refuse it. Then a volume whose
directory this host sees is restored by `restic restore` (hard links, nanosecond times and extended attributes as
they were); one reached through the archive API gets the dump's stream (restic 0.14 writes files, directories and
symbolic links into it: hard links come back as copies, times in whole seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from contracts import BackupRecord, ResticSnapshot

from ..errors import AgentError, Corrupt, Invalid, ToolFailed
from .bounds import most_entries
from .nats_catalog import Catalog
from .pipes import Counted
from .progress import Progress
from .restic import Restic
from .store_config import ResticConfig
from .stores import InOtherStore, NewBackup, Stored, TarSource, newest_first
from .volume_files import ContainerDir, HostDir

__all__ = ["ResticStore"]

log = structlog.get_logger(__name__)

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.:=@+-]")
# Node types `restic restore` makes that a restore must not: `dump` leaves them out, so they are listed apart.
_REFUSED_NODES = {"dev": "block device", "chardev": "character device", "socket": "socket",
                  "irregular": "irregular file"}
_RESTORABLE_NODES = frozenset({"file", "dir", "symlink", "fifo"})


def _tag(key: str, value: str) -> str:
    """A restic tag (`--tag` splits on commas): `key=value` with anything else than a plain character as `_`."""
    return f"{key}={_TAG_UNSAFE.sub('_', value)}"[:255]


class ResticStore:
    """`SnapshotStore` in a restic repository."""

    def __init__(self, name: str, cfg: ResticConfig, catalog: Catalog, *, host: str,
                 stores_file: Path | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.shared = cfg.shared
        self.records = catalog
        self.host = host
        self.restic = Restic(name, cfg, stores_file)
        self._repository_id: str | None = None
        self._opening = asyncio.Lock()

    async def repository_id(self) -> str:
        """The repository's id, asked of restic once (made first if it is missing and the store says `init`)."""
        async with self._opening:
            if self._repository_id is None:
                self._repository_id = await self.restic.repository_id(init=self.cfg.init)
            return self._repository_id

    # --- backup

    async def snapshot(self, files: HostDir | ContainerDir, new: NewBackup, progress: Progress) -> Stored:
        repository = await self.repository_id()
        tags = [_tag("volume", new.volume), _tag("backup", new.backup_id), _tag("trigger", new.trigger)]
        if new.policy:
            tags.append(_tag("policy", new.policy))
        if new.cmd_id:
            tags.append(_tag("cmd", new.cmd_id))
        args = ["backup", "--json", "--host", new.host, *(a for t in tags for a in ("--tag", t))]
        if isinstance(files, HostDir):
            parent = await self._parent(new.volume)
            st = await asyncio.to_thread(os.stat, files.path)
            # Counted beside restic (it reads the same directory entries): what a restore of it may hold.
            counting = asyncio.ensure_future(asyncio.to_thread(count_entries, files.path))
            try:
                summary = await self._backup_dir(args, files.path, parent, new, progress)
            finally:
                entries = await asyncio.shield(counting)
            if summary.get("_parent_dropped"):
                parent = None
            snap = _snapshot(summary, repository, "directory", parent=parent,
                             root=(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), entries=entries)
            size = snap.total_bytes_processed
        else:
            path = f"{new.volume}.tar"
            counted = Counted(files.read())

            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in counted:
                    progress.add(len(chunk))
                    yield chunk

            summary = await self._backup(
                [*args, "--stdin", "--stdin-filename", path], None, progress, new, stdin=chunks())
            snap = _snapshot(summary, repository, "tar", path=path)
            size = counted.n
        return Stored(size=size, stored_size=snap.data_added, sha256="",
                      compression="none" if self.cfg.compression == "off" else "zstd",
                      location=f"restic:{self.name}/{snap.snapshot_id}", restic=snap)

    async def _parent(self, volume: str) -> str | None:
        """The volume's newest directory snapshot made here in this store, by the agent's records."""
        for r in await self.catalog(volume):
            if r.host == self.host and r.restic is not None and r.restic.source == "directory":
                return r.restic.snapshot_id
        return None

    async def _backup_dir(self, args: list[str], path: Path, parent: str | None, new: NewBackup,
                          progress: Progress) -> dict[str, Any]:
        if parent is None:
            return await self._backup([*args, "."], path, progress, new)
        try:
            return await self._backup([*args, "--parent", parent, "."], path, progress, new)
        except ToolFailed as exc:
            # The previous snapshot was forgotten or pruned behind the agent's back: back up without it.
            if "parent" not in exc.stderr.lower() and "no matching id" not in exc.stderr.lower():
                raise
            log.warning("restic.parent_missing", store=self.name, parent=parent)
        summary = await self._backup([*args, "."], path, progress, new)
        summary["_parent_dropped"] = True
        return summary

    async def _backup(self, args: list[str], cwd: Path | None, progress: Progress, new: NewBackup,
                      stdin: AsyncIterator[bytes] | None = None) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        errors: list[str] = []

        def on_json(msg: dict[str, Any]) -> None:
            kind = msg.get("message_type")
            if kind == "status":
                if stdin is None:  # fed through Python: counted as it goes
                    progress.update(int(msg.get("bytes_done") or 0), _int(msg.get("total_bytes")),
                                    round(float(msg.get("percent_done") or 0) * 100, 1),
                                    _float(msg.get("seconds_remaining")))
            elif kind == "summary":
                summary.update(msg)
            elif kind == "error" and len(errors) < 5:
                errors.append(f"{msg.get('item') or '?'}: {_said(msg.get('error'))}")

        status, _ = await self.restic.run(*args, doing=f"backing up volume {new.volume}", on_json=on_json,
                                          stdin=stdin, cwd=cwd, ok=(0, 3))
        snapshot_id = str(summary.get("snapshot_id") or "")
        if status == 3:
            if snapshot_id:
                await self.restic.forget(snapshot_id)
            first = self.restic.scrub(errors[0]) if errors else "no detail"
            raise ToolFailed("restic", 3, f"some files of the volume could not be read ({first}); the incomplete "
                             "snapshot was dropped", f"backing up volume {new.volume}")
        if not snapshot_id:
            raise ToolFailed("restic", status, "ended without a snapshot id in its summary",
                             f"backing up volume {new.volume}")
        return summary

    async def record(self, record: BackupRecord) -> None:
        await self.records.put(record)

    async def discard(self, stored: Stored) -> None:
        if stored.restic is None:
            return
        try:
            await self.restic.forget(stored.restic.snapshot_id)
        except AgentError as exc:  # a snapshot without a record is never listed: maintenance can drop it
            log.warning("restic.discard_failed", store=self.name, snapshot=stored.restic.snapshot_id,
                        error=exc.message)

    # --- catalog

    async def catalog(self, volume: str | None = None) -> list[BackupRecord]:
        return newest_first(await self.records.records(volume, store=self.name))

    async def get(self, backup_id: str) -> BackupRecord:
        record = await self.records.get(backup_id)
        if record.store != self.name:
            raise InOtherStore(f"Backup {backup_id!r} is in store {record.store!r}, not in {self.name!r}.",
                               record.store)
        return record

    async def forget(self, backup_id: str) -> None:
        record = await self.get(backup_id)
        # The record first (refused for another host's backup): from then on the backup is gone from the catalog.
        await self.records.delete(record)
        if record.restic is not None:
            await self.restic.forget(record.restic.snapshot_id)

    async def cleanup(self) -> int:
        return 0

    # --- restore

    @contextlib.asynccontextmanager
    async def open(self, record: BackupRecord) -> AsyncIterator[TarSource]:
        snap = record.restic
        if snap is None:
            raise Corrupt(f"The record of backup {record.backup_id!r} names no restic snapshot; nothing was written "
                          "to the volume.")
        here = await self.repository_id()
        if snap.repository_id != here:
            raise Invalid(f"Backup {record.backup_id!r} is in restic repository {snap.repository_id[:12]}… (store "
                          f"{record.store!r} on host {record.host}); this host's store {self.name!r} is repository "
                          f"{here[:12]}…. Restore it on a host whose store {self.name!r} is that repository.")
        restic, sid = self.restic, snap.snapshot_id
        if snap.source == "tar":
            yield TarSource(argvs=[restic.argv("dump", sid, f"/{snap.path}")], env=restic.env(),
                            error=restic.tool_error)
            return

        async def restore_into(path: Path) -> None:
            await restic.run("restore", sid, "--target", str(path), doing=f"restoring snapshot {sid}")

        async def check() -> None:
            await self._check_nodes(record)

        root = None
        if snap.root_uid is not None and snap.root_gid is not None and snap.root_mode is not None:
            root = (snap.root_uid, snap.root_gid, snap.root_mode)
        yield TarSource(argvs=[restic.argv("dump", "--archive", "tar", sid, "/")], env=restic.env(),
                        restore_into=restore_into, root=root, check=check, error=restic.tool_error)

    async def _check_nodes(self, record: BackupRecord) -> None:
        """`Corrupt` if the snapshot holds a node `restic restore` would make and a restore must not (a device, a
        socket), or a name that is no single path component."""
        assert record.restic is not None
        refused: list[str] = []
        count = 0

        def on_json(msg: dict[str, Any]) -> None:
            nonlocal count
            if msg.get("struct_type") != "node" or refused:
                return
            count += 1
            kind, name = str(msg.get("type")), str(msg.get("name"))
            shown = repr(str(msg.get("path"))[:120])
            if kind in _REFUSED_NODES:
                refused.append(f"a {_REFUSED_NODES[kind]} ({shown}), which a restore never creates")
            elif kind not in _RESTORABLE_NODES:
                refused.append(f"a node of a type restic restores as no file ({kind!r}: {shown})")
            elif name in ("", ".", "..") or "/" in name or "\0" in name:
                refused.append(f"a node named {name[:120]!r}, which is no name inside a directory")

        await self.restic.run("ls", "--json", record.restic.snapshot_id,
                              doing=f"listing snapshot {record.restic.snapshot_id}", on_json=on_json)
        if refused:
            raise Corrupt(f"Backup {record.backup_id!r} holds {refused[0]}; nothing was written to the volume. A "
                          "restore writes only files, directories, links and FIFOs inside the volume: restore "
                          "another backup.")
        if count > most_entries(record):
            raise Corrupt(f"Backup {record.backup_id!r} holds {count} entries, more than the "
                          f"{record.restic.entries} its record says; nothing was written to the volume.")


def count_entries(root: Path) -> int:
    """Every entry under `root` (not following links, not crossing into what cannot be read)."""
    n, stack = 0, [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    n += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return n


def _snapshot(summary: dict[str, Any], repository: str, source: str, *, path: str | None = None,
              parent: str | None = None, root: tuple[int, int, int] | None = None,
              entries: int | None = None) -> ResticSnapshot:
    return ResticSnapshot(
        snapshot_id=str(summary["snapshot_id"]), repository_id=repository, source=source,  # type: ignore[arg-type]
        path=path, parent=parent,
        files_new=_int(summary.get("files_new")) or 0, files_changed=_int(summary.get("files_changed")) or 0,
        files_unmodified=_int(summary.get("files_unmodified")) or 0, dirs_new=_int(summary.get("dirs_new")) or 0,
        dirs_changed=_int(summary.get("dirs_changed")) or 0,
        dirs_unmodified=_int(summary.get("dirs_unmodified")) or 0, data_added=_int(summary.get("data_added")) or 0,
        total_files_processed=_int(summary.get("total_files_processed")) or 0,
        total_bytes_processed=_int(summary.get("total_bytes_processed")) or 0,
        root_uid=root[0] if root else None, root_gid=root[1] if root else None, root_mode=root[2] if root else None,
        entries=entries,
    )


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _said(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("Err") or error.get("message") or error)[:200]
    return str(error)[:200]
