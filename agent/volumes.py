"""Volume lifecycle on one host: create, inspect, list, remove, prune."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from contracts import (
    BackupRecord,
    ContainerRef,
    CreateRequest,
    InspectRequest,
    ListRequest,
    ListResult,
    PruneRequest,
    PruneResult,
    RemoveRequest,
    RemoveResult,
    VolumeRecord,
)

from .auth.rules import Rules
from .causes import Causes
from .errors import Conflict, InUse, Invalid, NotFound, Unavailable
from .locks import KeyedLocks
from .typing import Engine

__all__ = ["Volumes", "container_refs", "in_use", "named_volumes", "volume_record"]

log = structlog.get_logger(__name__)


def named_volumes(mounts: list[dict[str, Any]] | None) -> list[str]:
    """The named volumes among a container's mounts (not binds, not tmpfs)."""
    return [m["Name"] for m in mounts or [] if m.get("Type") == "volume" and m.get("Name")]


def container_refs(containers: list[dict[str, Any]]) -> dict[str, list[ContainerRef]]:
    """Index Engine container summaries by the named volumes they mount."""
    by_volume: dict[str, list[ContainerRef]] = defaultdict(list)
    for c in containers:
        ref = ContainerRef(container=_container_name(c), id=c["Id"], state=c.get("State") or "unknown")
        for name in named_volumes(c.get("Mounts")):
            by_volume[name].append(ref)
    return by_volume


def in_use(volume: str, users: list[ContainerRef]) -> InUse:
    """The refusal for a volume that containers use, naming them."""
    named = ", ".join(f"{u.container} ({u.state})" for u in users)
    return InUse(f"Volume {volume!r} is in use by {named}; remove those containers first.")


def _container_name(c: Mapping[str, Any]) -> str:
    names = c.get("Names") or []
    return str(names[0]).lstrip("/") if names else str(c["Id"])[:12]


def volume_record(v: Mapping[str, Any], used_by: list[ContainerRef]) -> VolumeRecord:
    """The contract's view of an Engine volume."""
    return VolumeRecord(
        name=v["Name"],
        driver=v.get("Driver") or "local",
        mountpoint=v.get("Mountpoint") or "",
        labels=dict(v.get("Labels") or {}),
        options=dict(v.get("Options") or {}),
        scope=v.get("Scope") or "local",
        created_at=v.get("CreatedAt") or "",
        used_by=used_by,
    )


async def used_by(engine: Engine, name: str) -> list[ContainerRef]:
    """The containers that mount the volume, with their state."""
    return container_refs(await engine.containers({"volume": [name]})).get(name, [])


FinalBackup = Callable[[str], Awaitable[BackupRecord]]
"""Back up a volume whose lock the caller holds (`remove` with `backup_first`)."""


class Volumes:
    """The volume operations; each one holds the lock of every volume it touches.

    `causes` notes what the agent does itself before Docker reports it (`volume.*` events carry the command);
    `rules` say what volumes the policy allows to be made (every new volume goes through `create_volume`).
    """

    def __init__(
        self, engine: Engine, locks: KeyedLocks, causes: Causes, rules: Rules, *, final_backup: FinalBackup
    ) -> None:
        self.engine = engine
        self.rules = rules
        self.locks = locks
        self.causes = causes
        self.final_backup = final_backup
        # Our creates that Docker cut short going down: Docker 20.10 answers "database not open" after it made the
        # volume, and keeps it without its labels. Ours to make again, whole, when the command is retried.
        self._cut_short: set[str] = set()

    async def used_by(self, name: str) -> list[ContainerRef]:
        return await used_by(self.engine, name)

    async def create(self, req: CreateRequest) -> VolumeRecord:
        """The volume as asked for, made if missing; `Conflict` if it exists with another spec.

        Docker's create is idempotent (it answers an existing volume as it is), so it is asked first and its answer
        compared: no inspect before every create. One made before this second (`_made_before`) is listed with the
        containers that use it; one made now is used by none.
        """
        self.rules.new_volume(req.name, req.driver, req.driver_opts)  # even one that exists: refused is refused
        spec = {"Name": req.name, "Driver": req.driver, "DriverOpts": req.driver_opts, "Labels": req.labels}
        async with self.locks.hold(req.name):
            if req.name in self._cut_short:  # what Docker left going down is looked at first (remake_cut_short)
                existing = await self._found(req.name)
                if existing is not None and not await self.remake_cut_short(existing, req.labels):
                    _check_same_spec(req, existing)
                    return volume_record(existing, await self.used_by(req.name))
            asked_at = datetime.now(UTC)
            try:
                v = await self.create_volume(spec)
            except (Conflict, Invalid, NotFound):
                # Docker refuses a name it has under another driver (or a driver it cannot find): said as before.
                found = await self._found(req.name)
                if found is None:
                    raise
                _check_same_spec(req, found)
                return volume_record(found, await self.used_by(req.name))
            _check_same_spec(req, v)
            return volume_record(v, await self.used_by(req.name) if _made_before(v, asked_at) else [])

    async def _found(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.engine.volume_inspect(name)
        except NotFound:
            return None

    async def create_volume(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Ask Docker for a new volume the policy allows, noting a create it cut short (see `remake_cut_short`)."""
        self.rules.new_volume(spec["Name"], spec.get("Driver") or "local", spec.get("DriverOpts") or {})
        self.causes.note("volume.created", spec["Name"])
        try:
            v = await self.engine.volume_create(spec)
        except Unavailable as exc:
            if "database not open" in exc.message:
                self._cut_short.add(spec["Name"])
            raise
        self._cut_short.discard(spec["Name"])
        return v

    async def remake_cut_short(self, existing: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
        """Remove `existing` if it is what our own create left when Docker went down mid-way: the volume without
        the `labels` it was asked for, which nothing uses. True if so: the caller makes it again."""
        name = existing["Name"]
        if name not in self._cut_short or existing.get("Labels") or not labels or await self.used_by(name):
            return False
        log.warning("volume.remade", volume=name, why="Docker lost its labels when a create met it going down")
        self.causes.note("volume.removed", name)
        await self.engine.volume_remove(name, force=False)
        self._cut_short.discard(name)
        return True

    async def inspect(self, req: InspectRequest) -> VolumeRecord:
        v = await self.engine.volume_inspect(req.name)
        return volume_record(v, await self.used_by(req.name))

    async def list(self, req: ListRequest) -> ListResult:
        filters: dict[str, list[str]] = {}
        f = req.filters
        if f is not None:
            if f.label:
                filters["label"] = f.label
            if f.driver:
                filters["driver"] = [f.driver]
            if f.dangling is not None:
                filters["dangling"] = ["true" if f.dangling else "false"]
        volumes = await self.engine.volume_list(filters)
        refs = container_refs(await self.engine.containers()) if volumes else {}
        records = [volume_record(v, refs.get(v["Name"], [])) for v in volumes]
        return ListResult(volumes=sorted(records, key=lambda r: r.name))

    async def remove(self, req: RemoveRequest) -> RemoveResult:
        """Remove the volume; with `backup_first`, a final backup first, and if that fails nothing is removed."""
        record = None
        async with self.locks.hold(req.name):
            if req.backup_first:
                users = await self.used_by(req.name)
                if users:
                    raise in_use(req.name, users)
                record = await self.final_backup(req.name)
            await self.remove_locked(req.name, force=req.force)
        return RemoveResult(name=req.name, removed=True, backup=record)

    async def remove_locked(self, name: str, *, force: bool) -> None:
        """Remove a volume whose lock the caller holds."""
        self.causes.note("volume.removed", name)
        try:
            await self.engine.volume_remove(name, force=force)
        except InUse as exc:
            users = await self.used_by(name)
            if not users:
                raise
            raise in_use(name, users) from exc

    async def prune(self, req: PruneRequest) -> PruneResult:
        filters: dict[str, list[str]] = {"dangling": ["true"]}
        if req.label:
            filters["label"] = req.label
        candidates = sorted(v["Name"] for v in await self.engine.volume_list(filters))
        if req.dry_run:
            return PruneResult(dry_run=True, volumes=candidates)
        removed: list[str] = []
        for name in candidates:
            async with self.locks.hold(name):
                try:
                    await self.remove_locked(name, force=False)
                except (InUse, NotFound):
                    # Taken into use or removed since the listing: not ours to prune any more.
                    log.info("prune.skipped", volume=name)
                    continue
            removed.append(name)
        return PruneResult(dry_run=False, volumes=removed)


def _made_before(v: Mapping[str, Any], asked_at: datetime) -> bool:
    """Whether Docker made `v` before the second of `asked_at` (a create that found it). Its `CreatedAt` has whole
    seconds; one it lacks or that does not parse counts as made before: its users are looked up."""
    try:
        created = datetime.fromisoformat(str(v.get("CreatedAt") or ""))
    except ValueError:
        return True
    if created.tzinfo is None:
        return True
    return created < asked_at.replace(microsecond=0)


def _check_same_spec(req: CreateRequest, existing: Mapping[str, Any]) -> None:
    differs = []
    driver = existing.get("Driver") or "local"
    if driver not in (req.driver, f"{req.driver}:latest"):  # a managed plugin is named with its tag
        differs.append(f"driver {existing.get('Driver')!r}")
    if dict(existing.get("Options") or {}) != req.driver_opts:
        differs.append("driver options")
    if dict(existing.get("Labels") or {}) != req.labels:
        differs.append("labels")
    if differs:
        raise Conflict(
            f"Volume {req.name!r} already exists with other {' and '.join(differs)}; "
            "remove it or use another name."
        )
