"""A volume's files as a standard tar stream, entries relative to the volume root (`./` first).

Two ways to reach them, producing and accepting the same format:
- `HostDir`: the volume's directory is visible to the agent (on the host, or Docker's volumes directory
  mounted into the agent's container). GNU tar and the compressor run as processes joined by OS pipes:
  native speed, no data through Python but what must be hashed.
- `ContainerDir`: the Engine's archive API (what `docker cp` uses) on a container that mounts the volume:
  a running user of it (needed for volumes mounted on demand: tmpfs, NFS, plugins), or a helper container
  that is created, never started, and removed again.
`volume_files` picks the host directory when it is there, else the archive API.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import tarfile
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from contracts import ContainerRef, labels

from ..errors import AgentError, NotFound
from ..typing import Engine
from .pipes import TAR_CREATE, TAR_EXTRACT

__all__ = [
    "ContainerDir",
    "DataPath",
    "HostDir",
    "ensure_helper_image",
    "helper_container",
    "host_path",
    "remove_leftover_helpers",
    "root_entry",
    "volume_files",
]

log = structlog.get_logger(__name__)

DataPath = Literal["auto", "archive"]
HELPER_IMAGE = ("volume-agent/scratch", "1")
HELPER_MOUNT = "/data"


def root_entry(head: bytes) -> tarfile.TarInfo | None:
    """The `./` entry at the start of a tar stream, if the first bytes hold it."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError):
        return None
    if first is not None and first.isdir() and first.name in (".", "./", ""):
        return first
    return None


@dataclass
class HostDir:
    """A volume's directory on this machine."""

    path: Path
    kind: str = "host"

    def create_argv(self) -> list[str]:
        return [*TAR_CREATE, str(self.path), "."]

    def extract_argv(self) -> list[str]:
        return [*TAR_EXTRACT, str(self.path)]

    async def is_empty(self) -> bool:
        def empty() -> bool:
            with os.scandir(self.path) as entries:
                return next(entries, None) is None

        return await asyncio.to_thread(empty)

    async def clear(self) -> None:
        """Remove everything inside (the directory itself stays: it is the mount point)."""

        def clear() -> None:
            for entry in os.scandir(self.path):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)

        await asyncio.to_thread(clear)


@dataclass
class ContainerDir:
    """A volume's files through the Engine's archive API on a container that mounts it."""

    engine: Engine
    container: str
    mount: str
    helper: bool
    kind: str = "archive"

    def read(self) -> AsyncIterator[bytes]:
        return self.engine.archive_get(self.container, f"{self.mount.rstrip('/')}/.")

    async def write(self, chunks: AsyncIterable[bytes]) -> None:
        """Extract a tar stream into the volume, and give its root the `./` entry's owner and mode.

        The archive API applies every entry's owner and mode but the root's own; a second, one-entry
        archive at `/` sets those on the mount point.
        """
        root: list[tarfile.TarInfo] = []

        async def watching() -> AsyncIterator[bytes]:
            first = True
            async for chunk in chunks:
                if first:
                    first = False
                    entry = root_entry(chunk)
                    if entry is not None:
                        root.append(entry)
                yield chunk

        await self.engine.archive_put(self.container, self.mount, watching())
        if root:
            await self.engine.archive_put(self.container, "/", _single(_root_as(root[0], self.mount)))

    async def is_empty(self) -> bool:
        head = b""
        stream = self.read()
        try:
            async for chunk in stream:
                head += chunk
                if len(head) >= 64 * 1024:
                    break
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        try:
            with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
                names = [m.name for m, _ in zip(tar, range(2), strict=False)]
        except (tarfile.TarError, EOFError):
            return False  # more than fits in the head: not empty
        return all(n in (".", "./") for n in names)


def _root_as(entry: tarfile.TarInfo, mount: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(mount.strip("/"))
    info.type = tarfile.DIRTYPE
    info.uid, info.gid, info.mode, info.mtime = entry.uid, entry.gid, entry.mode, entry.mtime
    return info


async def _single(info: tarfile.TarInfo) -> AsyncIterator[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    yield buf.getvalue()


async def ensure_helper_image(engine: Engine) -> str:
    """The helper containers' image: an empty root file system the agent imports itself (no registry)."""
    repo, tag = HELPER_IMAGE
    name = f"{repo}:{tag}"
    try:
        await engine.image_inspect(name)
    except NotFound:
        empty = io.BytesIO()
        with tarfile.open(fileobj=empty, mode="w"):
            pass
        await engine.image_import(repo, tag, empty.getvalue(), 'CMD ["/none"]')
        log.info("helper.image_imported", image=name)
    return name


@contextlib.asynccontextmanager
async def helper_container(engine: Engine, volume: str) -> AsyncIterator[ContainerDir]:
    """A container that mounts `volume` at /data for the archive API; created, never started, removed."""
    image = await ensure_helper_image(engine)
    cid = await engine.container_create(
        f"volume-agent-helper-{os.urandom(4).hex()}",
        {"Image": image, "Labels": {labels.HELPER: volume}, "NetworkDisabled": True,
         "HostConfig": {"Mounts": [{"Type": "volume", "Source": volume, "Target": HELPER_MOUNT}]}},
    )
    try:
        yield ContainerDir(engine, cid, HELPER_MOUNT, helper=True)
    finally:
        try:
            await engine.container_remove(cid)
        except AgentError:
            log.warning("helper.not_removed", container=cid)


async def remove_leftover_helpers(engine: Engine) -> None:
    """Helpers a crash left behind."""
    for c in await engine.containers({"label": [labels.HELPER]}):
        with contextlib.suppress(AgentError):
            await engine.container_remove(c["Id"])


def host_path(v: dict[str, Any]) -> Path | None:
    """The volume's directory when it holds the data itself (plain local volumes, not mounted on demand)."""
    opts = v.get("Options") or {}
    mp = v.get("Mountpoint") or ""
    if v.get("Driver") == "local" and not opts.get("type") and not opts.get("device") and mp and os.path.isdir(mp):
        return Path(mp)
    return None


@asynccontextmanager
async def volume_files(
    engine: Engine, v: dict[str, Any], users: list[ContainerRef], mode: DataPath
) -> AsyncIterator[HostDir | ContainerDir]:
    """The volume's files; `users` lets a running container that mounts it serve the archive API."""
    path = host_path(v) if mode == "auto" else None
    if path is not None:
        yield HostDir(path)
        return
    for u in users:
        if u.state == "running":
            try:
                c = await engine.container_inspect(u.id)
            except NotFound:
                continue  # removed since it was listed
            dest = next((m["Destination"] for m in c.get("Mounts") or [] if m.get("Name") == v["Name"]), None)
            if dest:
                yield ContainerDir(engine, u.id, dest, helper=False)
                return
    async with helper_container(engine, v["Name"]) as files:
        yield files
