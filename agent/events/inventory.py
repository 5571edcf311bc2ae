"""The host's live inventory: every volume, who uses it, its last backup; published when anything changes.

A snapshot is rebuilt in full (two Engine calls) rather than patched from events: a missed or repeated
event can never leave it wrong, and a resync after Docker comes back is just another rebuild. Changes are
debounced: a burst of events makes one snapshot, published within a second of the first, and never more
than one a second. Sizes come from Docker's `/system/df`, which walks every volume, so they are computed
on a slower cadence and the snapshot says when (`sizes_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from contracts import (
    BackupRecord,
    EngineInfo,
    InventoryRequest,
    InventorySnapshot,
    InventoryVolume,
    LastBackup,
    Protection,
)

from .. import __version__
from ..backup.stores import Stores
from ..errors import AgentError
from ..typing import Engine, InventorySink, PolicyCoverage
from ..volumes import container_refs

__all__ = ["Inventory", "InventorySink"]

log = structlog.get_logger(__name__)

DEBOUNCE_S = 0.25
MIN_INTERVAL_S = 1.0
RETRY_S = 5.0
_CONTAINER_ACTIONS = frozenset({"create", "destroy", "start", "die", "rename", "pause", "unpause"})


def _protection(names: list[str], status: Protection, reason: str | None) -> dict[str, Any]:
    return {"policies": names, "protection": status, "protection_reason": reason}


def _last(record: BackupRecord) -> LastBackup:
    return LastBackup(backup_id=record.backup_id, created_at=record.created_at, store=record.store,
                      size=record.size, trigger=record.trigger)


class Inventory:
    """Builds and publishes snapshots; also answers the `inventory` op."""

    def __init__(
        self, engine: Engine, stores: Stores, sink: InventorySink, host: str, *, heartbeat_s: float,
        sizes_every_s: float, insecure: list[str] | None = None, policies: PolicyCoverage | None = None,
    ) -> None:
        """`policies`: how the backup policies cover each volume (None: not said)."""
        self.engine = engine
        self.stores = stores
        self.sink = sink
        self.host = host
        self.heartbeat_s = heartbeat_s
        self.sizes_every_s = sizes_every_s
        self.insecure = insecure or []
        self.policies = policies
        self.seq = 0
        self._engine_info = EngineInfo(version="", api_version="", storage_driver="")
        self._plugins: list[str] = []
        self._last_backup: dict[str, LastBackup] = {}
        self._backups_stale = True
        self._sizes: dict[str, int] = {}
        self._sizes_at: str | None = None
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._encoder = msgspec.json.Encoder()

    async def start(self) -> None:
        if self._tasks:
            return
        self._dirty.set()
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="inventory"))
        if self.sizes_every_s > 0:
            self._tasks.append(asyncio.create_task(self._sizes_loop(), name="inventory-sizes"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def changed(self) -> None:
        self._dirty.set()

    # EventHandler
    async def on_docker_event(self, evt: dict[str, Any]) -> None:
        if evt.get("Type") == "volume" or evt.get("Action") in _CONTAINER_ACTIONS:
            self.changed()

    async def on_resync(self) -> None:
        """Docker is (back): the Engine may be another version now, and anything may have changed."""
        version = await self.engine.version()
        info = await self.engine.info()
        self._engine_info = EngineInfo(
            version=str(version.get("Version") or ""), api_version=str(version.get("ApiVersion") or ""),
            storage_driver=str(info.get("Driver") or ""),
        )
        self._plugins = sorted((info.get("Plugins") or {}).get("Volume") or [])
        self.changed()

    # Told by Backups
    def backed_up(self, record: BackupRecord) -> None:
        if record.host != self.host:
            return
        current = self._last_backup.get(record.volume)
        if current is None or current.created_at <= record.created_at:
            self._last_backup[record.volume] = _last(record)
        self.changed()

    def forgotten(self, record: BackupRecord) -> None:
        current = self._last_backup.get(record.volume)
        if current is not None and current.backup_id == record.backup_id:
            self._backups_stale = True
            self.changed()

    async def snapshot(self, req: InventoryRequest | None = None) -> InventorySnapshot:
        """A snapshot built now."""
        if self._backups_stale:
            await self._load_backups()
        volumes = await self.engine.volume_list({})
        refs = container_refs(await self.engine.containers()) if volumes else {}
        now = datetime.now(UTC)
        cover = self.policies.protection_of if self.policies is not None else None
        self.seq += 1
        return InventorySnapshot(
            host=self.host,
            agent_version=__version__,
            engine=self._engine_info,
            volumes=sorted(
                (
                    InventoryVolume(
                        name=v["Name"], driver=v.get("Driver") or "local", labels=v.get("Labels") or {},
                        options=v.get("Options") or {}, mountpoint=v.get("Mountpoint") or "",
                        created_at=v.get("CreatedAt") or "", used_by=refs.get(v["Name"], []),
                        last_backup=self._last_backup.get(v["Name"]), size=self._sizes.get(v["Name"]),
                        **(_protection(*cover(v["Name"], now)) if cover is not None else {}),
                        last_verify=self.policies.last_verify(v["Name"]) if self.policies is not None else None,
                    )
                    for v in volumes
                ),
                key=lambda v: v.name,
            ),
            plugins=self._plugins,
            taken_at=datetime.now(UTC).isoformat(),
            seq=self.seq,
            heartbeat_s=self.heartbeat_s,
            sizes_at=self._sizes_at,
            insecure=self.insecure,
            rejected_policies=self.policies.rejected() if self.policies is not None else [],
        )

    def encode(self, snapshot: InventorySnapshot) -> bytes:
        return self._encoder.encode(snapshot)

    async def _load_backups(self) -> None:
        last: dict[str, LastBackup] = {}
        for r in await self.stores.catalog(host=self.host):  # newest first
            last.setdefault(r.volume, _last(r))
        self._last_backup, self._backups_stale = last, False

    async def _publish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.heartbeat_s)
            if self._dirty.is_set():
                await asyncio.sleep(DEBOUNCE_S)  # let a burst of events settle into one snapshot
            self._dirty.clear()
            started = time.perf_counter()
            # A host where containers come and go all the time: still at most one snapshot a second.
            loop = asyncio.get_running_loop()
            next_at = loop.time() + MIN_INTERVAL_S
            try:
                data = self.encode(await self.snapshot())
                await self.sink.inventory(data)
            except AgentError as exc:
                log.warning("inventory.not_published", error=exc.message, retry_in_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
                self._dirty.set()
                continue
            log.debug("inventory.published", seq=self.seq, bytes=len(data),
                      ms=round((time.perf_counter() - started) * 1000, 1))
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # the clock asyncio.sleep keeps

    async def _sizes_loop(self) -> None:
        while True:
            try:
                df = await self.engine.system_df()
                sizes = {}
                for v in df.get("Volumes") or []:
                    size = (v.get("UsageData") or {}).get("Size", -1)
                    if isinstance(size, int) and size >= 0:
                        sizes[v["Name"]] = size
                self._sizes, self._sizes_at = sizes, datetime.now(UTC).isoformat()
                self.changed()
            except AgentError as exc:
                log.warning("inventory.sizes_failed", error=exc.message)
            await asyncio.sleep(self.sizes_every_s)
