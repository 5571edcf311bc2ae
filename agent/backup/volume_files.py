"""Which way to reach a volume's files: the host directory when it is there, else the archive API."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from contracts import ContainerRef

from ..docker import Engine
from ..errors import NotFound
from .pipes import ContainerDir, HostDir, helper_container

__all__ = ["DataPath", "volume_files"]

DataPath = Literal["auto", "archive"]


def _on_host(v: dict[str, Any]) -> Path | None:
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
    path = _on_host(v) if mode == "auto" else None
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
