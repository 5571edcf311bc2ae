"""Sharing volumes: containers that take another's volumes (`--volumes-from`) or mount named volumes."""

from __future__ import annotations

from typing import Any

import structlog

from contracts import ShareRequest, ShareResult, labels

from .auth.rules import Rules
from .causes import Causes
from .errors import AgentError, NotFound
from .locks import KeyedLocks
from .typing import Engine
from .volumes import named_volumes

__all__ = ["Shares"]

log = structlog.get_logger(__name__)



class Shares:
    """The `share` op: containers that take another's volumes (`--volumes-from`) or mount named volumes.

    Only from images the policy lists, and only named volumes that are not host paths outside its bind roots.
    """

    def __init__(self, engine: Engine, locks: KeyedLocks, causes: Causes, rules: Rules) -> None:
        self.engine = engine
        self.rules = rules
        self.locks = locks
        self.causes = causes

    async def share(self, req: ShareRequest) -> ShareResult:
        """Create (and maybe start) the container; on any failure undo everything this call made."""
        return await _share(self, req)


async def _share(shares: Shares, req: ShareRequest) -> ShareResult:
    engine, rules = shares.engine, shares.rules
    spec = req.container
    rules.image(spec.image)
    try:
        await engine.image_inspect(spec.image)
    except NotFound as exc:
        raise NotFound(
            f"Image {spec.image!r} is not on this host; pull or import it before sharing volumes with it."
        ) from exc
    shared: list[str] = []
    volumes_from: list[str] = []
    for vf in req.volumes_from:
        try:
            source = await engine.container_inspect(vf.container)
        except NotFound as exc:
            raise NotFound(f"Container {vf.container!r} (volumes_from) does not exist on this host.") from exc
        rules.only_named_volumes(vf.container, source.get("Mounts") or [])
        for name in named_volumes(source.get("Mounts")):
            rules.existing_volume(await engine.volume_inspect(name))
        volumes_from.append(f"{vf.container}:{'ro' if vf.readonly else 'rw'}")
        shared += named_volumes(source.get("Mounts"))

    names = [m.volume for m in req.mounts]
    async with shares.locks.hold_all(names):
        created: list[str] = []
        cid: str | None = None
        try:
            for name in names:
                try:
                    rules.existing_volume(await engine.volume_inspect(name))
                except NotFound:
                    shares.causes.note("volume.created", name)
                    await engine.volume_create({"Name": name, "Driver": "local"})
                    created.append(name)
            config: dict[str, Any] = {
                "Image": spec.image,
                "Env": [f"{k}={v}" for k, v in spec.env.items()],
                "Labels": {labels.CREATED_BY: "share"},
                "HostConfig": {
                    "VolumesFrom": volumes_from,
                    "Mounts": [
                        {"Type": "volume", "Source": m.volume, "Target": m.target, "ReadOnly": m.readonly}
                        for m in req.mounts
                    ],
                },
            }
            if spec.command is not None:
                config["Cmd"] = spec.command
            cid = await engine.container_create(spec.name.lstrip("/"), config)
            if spec.start:
                await engine.container_start(cid)
            state = (await engine.container_inspect(cid)).get("State", {}).get("Status", "unknown")
        except BaseException:
            await _undo(shares, cid, created)
            raise
    return ShareResult(
        container=spec.name.lstrip("/"),
        id=cid,
        state=state,
        volumes=sorted(set(shared + names)),
        created_volumes=created,
    )


async def _undo(shares: Shares, cid: str | None, created: list[str]) -> None:
    """Leave no partial state: the container and the volumes this call created go."""
    try:
        if cid is not None:
            await shares.engine.container_remove(cid)
        for name in created:
            shares.causes.note("volume.removed", name)
            await shares.engine.volume_remove(name, force=False)
    except AgentError:
        log.exception("share.undo_failed", container=cid, volumes=created)
