"""Backup on stop: a container labelled `volume-agent.backup.on-stop=true` has its named volumes backed up
when it stops (`docker stop`, `docker kill`, or its process exits).

Docker reports one stop as `kill`, `die` and `stop`; only `die` comes for every kind of stop, exactly once,
so it is the trigger. The agent's own stops (`stop_containers`) are noted beforehand and trigger nothing.
A volume whose on-stop backup is still waiting for its turn is not queued twice: the waiting backup will
read the newer content anyway (a container in a restart loop makes one backup at a time, not a backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import structlog

from contracts import BackupRequest
from contracts.labels import ON_STOP, ON_STOP_COMPRESSION, ON_STOP_KEEP, ON_STOP_STORE, ON_STOP_VOLUMES

from ..backup.backups import Backups
from ..causes import Causes
from ..errors import AgentError, Invalid
from ..locks import KeyedLocks
from ..tasks import Tasks
from ..typing import Engine, EventSink
from ..volumes import named_volumes
from .watch import Cursor

__all__ = ["OnStop", "options_from_labels"]

log = structlog.get_logger(__name__)

_OPTION_LABELS = {"keep": ON_STOP_KEEP, "compression": ON_STOP_COMPRESSION, "store": ON_STOP_STORE}


def options_from_labels(labels: dict[str, str], mounted: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The volumes to back up and the backup options a container's labels ask for; `Invalid` if wrong."""
    volumes = mounted
    if (subset := labels.get(ON_STOP_VOLUMES)) is not None:
        wanted = [v.strip() for v in subset.split(",") if v.strip()]
        missing = sorted(set(wanted) - set(mounted))
        if missing:
            raise Invalid(f"Label {ON_STOP_VOLUMES} names volumes the container does not mount: "
                          f"{', '.join(missing)}.")
        volumes = [v for v in mounted if v in wanted]
    options: dict[str, Any] = {}
    for field, label in _OPTION_LABELS.items():
        if (value := labels.get(label)) is not None:
            options[field] = int(value) if field == "keep" and value.strip().isdigit() else value.strip()
    try:
        msgspec.convert({"volume": "probe", **options}, BackupRequest)
    except msgspec.ValidationError as exc:
        raise Invalid(f"The container's backup labels are invalid: {exc}.") from None
    return volumes, options


class OnStop:
    """Turns `die` events of labelled containers into backups."""

    def __init__(
        self, engine: Engine, locks: KeyedLocks, causes: Causes, events: EventSink, backups: Backups, tasks: Tasks,
        cursor: Cursor,
    ) -> None:
        self.engine = engine
        self.locks = locks
        self.causes = causes
        self.events = events
        self.backups = backups
        self.tasks = tasks
        self.cursor = cursor
        self._waiting: set[str] = set()
        # Mounts of labelled containers, kept from `create`/`start`: a `--rm` container may be gone by `die`.
        self._mounts: dict[str, list[str]] = {}

    async def on_resync(self) -> None:
        for c in await self.engine.containers({"label": [f"{ON_STOP}=true"]}):
            self._mounts[c["Id"]] = named_volumes(c.get("Mounts"))

    async def on_docker_event(self, evt: dict[str, Any]) -> None:
        if evt.get("Type") != "container":
            return
        actor = evt.get("Actor") or {}
        attrs: dict[str, str] = actor.get("Attributes") or {}
        cid, action = str(actor.get("ID") or evt.get("id") or ""), evt.get("Action")
        if attrs.get(ON_STOP) != "true":
            return
        if action in ("create", "start"):
            with contextlib.suppress(AgentError):
                c = await self.engine.container_inspect(cid)
                self._mounts[cid] = named_volumes(c.get("Mounts"))
            return
        if action == "destroy":
            self._mounts.pop(cid, None)
            return
        if action != "die":
            return
        name = attrs.get("name") or cid[:12]
        ours, _ = self.causes.take("stop", cid)
        if ours:
            log.info("onstop.own_stop_ignored", container=name)
            return
        await self._schedule(cid, name, attrs, int(evt.get("timeNano") or 0))

    async def _schedule(self, cid: str, name: str, labels: dict[str, str], at_ns: int) -> None:
        mounted = self._mounts.get(cid)
        if mounted is None:
            try:
                mounted = named_volumes((await self.engine.container_inspect(cid)).get("Mounts"))
            except AgentError as exc:
                await self._failed("", name, f"Container {name!r} stopped, but its volumes could not be read: "
                                   f"{exc.message}")
                return
        try:
            volumes, options = options_from_labels(labels, mounted)
        except Invalid as exc:
            await self._failed(",".join(mounted), name, exc.message)
            return
        for volume in volumes:
            if volume in self._waiting:
                log.info("onstop.coalesced", volume=volume, container=name)
                continue
            self._waiting.add(volume)
            self.cursor.hold(at_ns)
            req = BackupRequest(volume=volume, **options)
            # Never wait here: this is the Docker event loop. The backup waits for a slot of its own.
            self.tasks.start(f"on-stop:{volume}", self._backup(req, name, at_ns))

    async def _backup(self, req: BackupRequest, container: str, at_ns: int) -> None:
        try:
            with structlog.contextvars.bound_contextvars(trigger="on-stop", container=container, volume=req.volume):
                async with self.tasks.slot(), self.backups.slot(), self.locks.hold(req.volume):
                    self._waiting.discard(req.volume)
                    record = await self.backups.backup_locked(req, trigger="on-stop", container=container)
                log.info("onstop.backed_up", backup_id=record.backup_id)
        except AgentError as exc:  # published as backup.failed by the backup itself; the loop goes on
            log.warning("onstop.backup_failed", volume=req.volume, container=container, error=exc.message)
        finally:
            self._waiting.discard(req.volume)
            # Cancelled by shutdown: keep the hold, so the saved cursor replays this stop next start.
            if not _cancelling():
                self.cursor.release(at_ns)

    async def _failed(self, volume: str, container: str, message: str) -> None:
        log.warning("onstop.not_backed_up", container=container, error=message)
        with contextlib.suppress(AgentError):
            await self.events.event("backup.failed", volume, error=message, container=container)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
