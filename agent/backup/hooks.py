"""A consistent backup: the users' own pre and post hooks (`exec` in the container), and stopping them meanwhile."""

from __future__ import annotations

import asyncio

import structlog

from contracts import ContainerRef, labels

from ..causes import Causes
from ..errors import AgentError, Conflict, NotFound
from ..typing import Engine

__all__ = ["POST_HOOK", "PRE_HOOK", "restart", "run_hooks", "stop_running"]

log = structlog.get_logger(__name__)

PRE_HOOK = labels.EXEC_PRE
POST_HOOK = labels.EXEC_POST


async def run_hooks(engine: Engine, users: list[ContainerRef], label: str, *, must_succeed: bool) -> list[str]:
    """Run the hook command each running user sets on itself (an image's labels do not count). A failure is
    `Conflict` if `must_succeed` (pre hooks), else a sentence in the list returned (post hooks: the backup is made,
    and its caller is told in the reply's `warnings`)."""
    failed: list[str] = []
    for u in users:
        if u.state != "running":
            continue
        cmd = await _own_label(engine, u.id, label)
        if cmd is None:
            continue
        code, out = await engine.container_exec(u.id, ["sh", "-c", cmd])
        log.info("backup.hook", container=u.container, hook=label, exit_code=code)
        if code != 0:
            msg = f"The {label.rsplit('.', 1)[-1]} hook in container {u.container!r} failed (exit {code})"
            msg += f": {out[-300:]}" if out else ""
            if must_succeed:
                raise Conflict(msg + "; nothing was backed up.")
            log.warning("backup.post_hook_failed", container=u.container, message=msg)
            failed.append(msg + "; the backup was made.")
    return failed

async def _own_label(engine: Engine, cid: str, label: str) -> str | None:
    try:
        c = await engine.container_inspect(cid)
    except NotFound:
        return None  # removed since it was listed: nothing to run a hook in
    value = (c.get("Config", {}).get("Labels") or {}).get(label)
    if not value:
        return None
    image = await engine.image_inspect(c.get("Image") or c["Config"]["Image"])
    if (image.get("Config", {}).get("Labels") or {}).get(label) == value:
        log.warning("backup.hook_from_image_ignored", container=cid[:12], hook=label)
        return None
    return str(value)

async def stop_running(engine: Engine, causes: Causes, users: list[ContainerRef]) -> list[ContainerRef]:
    """Stop the running users, noting each stop as the agent's own; on failure, start again those stopped."""
    stopped = []
    try:
        for u in users:
            if u.state == "running":
                causes.note("stop", u.id)  # its stop is ours: no on-stop backup
                await engine.container_stop(u.id)
                stopped.append(u)
    except BaseException:
        await asyncio.shield(restart(engine, stopped))
        raise
    return stopped

async def restart(engine: Engine, stopped: list[ContainerRef]) -> None:
    for u in stopped:
        try:
            await engine.container_start(u.id)
        except AgentError:
            log.exception("backup.restart_failed", container=u.container)
