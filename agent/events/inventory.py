"""The host's live inventory: every volume, who uses it, its last backup; published when anything changes.

The agent keeps the Engine's volumes and containers in memory and brings them up to date from Docker's events:
a volume event makes it inspect that volume (made, removed, or changed), a container event list the containers
again. Each look is a read of the named object as it is now, never a delta: a repeated event changes nothing,
and a missed one is caught by the full list at every heartbeat and at every resync after Docker comes back.
From that state every volume's entry is made again at each publish (a few tens of ms at 20,000 volumes, with no
Engine call); only the chunks whose entries changed are written, then the head (`contracts.inventory_chunks`).

Changes are debounced: a burst of events makes one snapshot, published within a second of the first, and never
more than one a second. Sizes come from Docker's `/system/df`, which walks every volume, so they are computed
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
    ContainerRef,
    EngineInfo,
    InventoryHead,
    InventoryRequest,
    InventorySnapshot,
    InventoryVolume,
    LastBackup,
    Protection,
    head_key,
)

from .. import __version__
from ..backup.stores import Stores
from ..errors import AgentError, Invalid, NotFound
from ..typing import Engine, InventorySink, PolicyCoverage
from ..volumes import container_refs
from .chunks import DEFAULT_PER_CHUNK, Chunks, Plan, layout

__all__ = ["Inventory", "InventorySink"]

log = structlog.get_logger(__name__)

DEBOUNCE_S = 0.25
MIN_INTERVAL_S = 1.0
RETRY_S = 5.0
INSPECT_MAX = 64
"""More volumes than this to look at once (a burst of creates): one list of them all is faster."""
_CONTAINER_ACTIONS = frozenset({"create", "destroy", "start", "die", "rename", "pause", "unpause"})
_HEAD = msgspec.json.Decoder(InventoryHead)
_NO_USERS: list[ContainerRef] = []


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
        per_chunk: int = DEFAULT_PER_CHUNK,
    ) -> None:
        """`policies`: how the backup policies cover each volume (None: not said). `per_chunk`: volumes a chunk
        holds on average at most (contracts.inventory_chunks)."""
        self.engine = engine
        self.stores = stores
        self.sink = sink
        self.host = host
        self.heartbeat_s = heartbeat_s
        self.sizes_every_s = sizes_every_s
        self.insecure = insecure or []
        self.policies = policies
        self.seq = 0
        self.chunks = Chunks(host, per_chunk=per_chunk)
        self._engine_info = EngineInfo(version="", api_version="", storage_driver="")
        self._plugins: list[str] = []
        self._last_backup: dict[str, LastBackup] = {}
        self._backups_stale = True
        self._sizes: dict[str, int] = {}
        self._sizes_at: str | None = None
        # The Engine's state as last seen, and what to look at again before the next snapshot.
        self._volumes: dict[str, dict[str, Any]] = {}
        self._users: dict[str, list[ContainerRef]] = {}
        self._relist = True
        self._containers_stale = True
        self._inspect: set[str] = set()
        self._entries: list[InventoryVolume] = []
        self._built: dict[str, tuple[Any, ...]] = {}
        """Each volume's inputs and entry, as last built."""
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._encoder = msgspec.json.Encoder()

    async def start(self) -> None:
        if self._tasks:
            return
        await self._continue_from_last_run()
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
        if evt.get("Type") == "volume":
            name = (evt.get("Actor") or {}).get("ID")
            if isinstance(name, str) and name:
                self._inspect.add(name)
            else:
                self._relist = True
            self.changed()
        elif evt.get("Action") in _CONTAINER_ACTIONS:
            self._containers_stale = True
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
        self._relist = True
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

    def expected_size(self, volume: str) -> int | None:
        """What a backup of `volume` will likely weigh (tar bytes): its last backup's, else Docker's last measure of
        its content; None if neither is known. For progress displays only."""
        last = self._last_backup.get(volume)
        return last.size if last is not None else self._sizes.get(volume)

    async def snapshot(self, req: InventoryRequest | None = None) -> InventorySnapshot:
        """The `inventory` op: the whole snapshot, or one chunk of it (`req.chunk`), as of now.

        The whole snapshot and chunk 0 list the volumes afresh (a volume made just before is in it, whether or
        not its event has come); the other chunks follow from there. A whole snapshot too large for one NATS
        message is refused by the dispatcher, which says to ask chunk by chunk.
        """
        chunk = req.chunk if req is not None else None
        async with self._lock:
            await self._update(relist=chunk in (None, 0))
            self.seq += 1
            if chunk is None:
                return self._snapshot(self._entries)
            n = layout(len(self._entries), self.chunks.n, self.chunks.per_chunk)  # as the next publish lays them out
            if chunk >= n:
                raise Invalid(f"The inventory of {self.host} has {n} chunk(s), 0 to {n - 1}; there is no chunk "
                              f"{chunk}. Ask for chunk 0 again: its reply says how many there are now.")
            volumes = self.chunks.groups(self._entries, n)[chunk]
            return msgspec.structs.replace(self._snapshot(volumes), chunk=chunk, chunks=n)

    def encode(self, snapshot: InventorySnapshot) -> bytes:
        return self._encoder.encode(snapshot)

    async def publish(self, *, relist: bool = False) -> Plan:
        """Bring the state up to date and write what changed: the changed chunks, then the head. `relist`: list
        every volume and container again first (the heartbeat)."""
        async with self._lock:
            await self._update(relist=relist)
            self.seq += 1
            plan = self.chunks.plan(self._entries, self.seq)
            self.chunks.finish(plan, self._head(plan), self._snapshot(self._entries) if plan.n == 1 else None)
            if plan.chunks:
                await self.sink.inventory_put(plan.chunks)
            await self.sink.inventory_put(plan.last)
            self.chunks.commit(plan)
            if plan.stale:
                try:
                    await self.sink.inventory_delete(plan.stale)
                except AgentError as exc:  # left over, never read: no head names them
                    log.warning("inventory.stale_chunks_left", keys=len(plan.stale), error=exc.message)
            return plan

    async def _continue_from_last_run(self) -> None:
        """Go on from the head an earlier run left (its seq, its chunks to remove if there are fewer now)."""
        try:
            raw = await self.sink.inventory_get(head_key(self.host))
            head = _HEAD.decode(raw) if raw else None
        except (AgentError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.info("inventory.no_earlier_head", error=getattr(exc, "message", str(exc)))
            return
        if head is not None:
            self.seq, self.chunks.old_n = head.seq, len(head.chunks)

    async def _update(self, *, relist: bool = False) -> None:
        """Look again at what events or a heartbeat asked for, then make every volume's entry again."""
        relist = relist or self._relist or len(self._inspect) > INSPECT_MAX
        inspect, containers = self._inspect, relist or self._containers_stale
        self._relist, self._containers_stale, self._inspect = False, False, set()
        try:
            if self._backups_stale:
                await self._load_backups()
            if relist:
                self._volumes = {v["Name"]: v for v in await self.engine.volume_list({})}
            for name in sorted(inspect):  # after the list: what they say is newer
                try:
                    self._volumes[name] = await self.engine.volume_inspect(name)
                except NotFound:
                    self._volumes.pop(name, None)
            if containers:
                self._users = dict(container_refs(await self.engine.containers()))
        except AgentError:  # Docker away: look again next time
            self._relist |= relist
            self._containers_stale |= containers
            self._inspect |= inspect
            raise
        self._entries = self._build()

    def _build(self) -> list[InventoryVolume]:
        """Every volume's entry, sorted by name. An entry whose inputs are those of last time is kept, with its
        inputs' tuple: at 20,000 volumes, making them anew costs little by itself, but so many new objects that
        live on make the collector walk the whole heap at each publish (measured: 20 ms became 100 to 250)."""
        now = datetime.now(UTC)
        cover = self.policies.protection_of if self.policies is not None else None
        cache, built, volumes = self._built, {}, self._volumes
        entries = []
        for name in sorted(volumes):
            v, users = volumes[name], self._users.get(name, _NO_USERS)
            last, size = self._last_backup.get(name), self._sizes.get(name)
            protection = cover(name, now) if cover is not None else None
            verify = self.policies.last_verify(name) if self.policies is not None else None
            old = cache.get(name)
            if old is not None and (old[0] is v or old[0] == v) and old[1] == users and old[2] == last \
                    and old[3] == size and old[4] == protection and old[6] == verify:
                built[name] = old
                entries.append(old[5])
                continue
            entry = InventoryVolume(
                name=name, driver=v.get("Driver") or "local", labels=v.get("Labels") or {},
                options=v.get("Options") or {}, mountpoint=v.get("Mountpoint") or "",
                created_at=v.get("CreatedAt") or "", used_by=users, last_backup=last, size=size,
                **(_protection(*protection) if protection is not None else {}), last_verify=verify,
            )
            built[name] = (v, users, last, size, protection, entry, verify)
            entries.append(entry)
        self._built = built
        return entries

    def _snapshot(self, volumes: list[InventoryVolume]) -> InventorySnapshot:
        return InventorySnapshot(
            host=self.host, agent_version=__version__, engine=self._engine_info, volumes=volumes,
            plugins=self._plugins, taken_at=datetime.now(UTC).isoformat(), seq=self.seq,
            heartbeat_s=self.heartbeat_s, sizes_at=self._sizes_at, insecure=self.insecure,
            rejected_policies=self.policies.rejected() if self.policies is not None else [],
        )

    def _head(self, plan: Plan) -> InventoryHead:
        return InventoryHead(
            host=self.host, agent_version=__version__, engine=self._engine_info, plugins=self._plugins,
            taken_at=datetime.now(UTC).isoformat(), seq=self.seq, heartbeat_s=self.heartbeat_s,
            chunks=plan.refs, volume_count=len(self._entries), sizes_at=self._sizes_at, insecure=self.insecure,
            rejected_policies=self.policies.rejected() if self.policies is not None else [],
        )

    async def _load_backups(self) -> None:
        last: dict[str, LastBackup] = {}
        for r in await self.stores.catalog(host=self.host):  # newest first
            last.setdefault(r.volume, _last(r))
        self._last_backup, self._backups_stale = last, False

    async def _publish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.heartbeat_s)
            heartbeat = not self._dirty.is_set()
            if not heartbeat:
                await asyncio.sleep(DEBOUNCE_S)  # let a burst of events settle into one snapshot
            self._dirty.clear()
            started = time.perf_counter()
            # A host where containers come and go all the time: still at most one snapshot a second.
            loop = asyncio.get_running_loop()
            next_at = loop.time() + MIN_INTERVAL_S
            try:
                plan = await self.publish(relist=heartbeat)
            except AgentError as exc:
                log.warning("inventory.not_published", error=exc.message, retry_in_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
                self._dirty.set()
                continue
            log.debug("inventory.published", seq=self.seq, chunks=plan.n, written=len(plan.chunks),
                      bytes=sum(map(len, plan.chunks.values())) + sum(map(len, plan.last.values())),
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
