"""The page server's side of the bus: read the fleet whole, then follow it.

At start (and again after a reconnect, and every `RESYNC_S`) the inventory bucket is read completely
(`volumectl.kv.read_bucket`, then `contracts.assemble`); so are the backup catalog (its totals) and the policies
bucket. Before the first read it subscribes to `<prefix>.inv.>`, `<prefix>.evt.>` and `<prefix>.res.>` and
flushes (nats-py sends a SUB with its next flush: without one, what is published meanwhile is missed), holding
what arrives until the read is done. The feed starts from the last `HISTORY` messages of the event and audit
streams. Every value read from the bus goes through a bounded decoder (`contracts.bounds`); one that does not
decode is left out and counted, never fatal.

The follower sends nothing but reads: KV and stream reads, and the read ops `policies` and `backups`, signed
as its identity (a reader is enough).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts import (
    BackupPolicy,
    BackupsResult,
    IncompleteInventory,
    InventorySnapshot,
    PoliciesResult,
    PolicyEntry,
    Reply,
    VolumeEvent,
    assemble,
    result_as,
)
from contracts.bounds import BoundedDecoder

from ..client import AgentClient, NoAgent
from ..kv import IncompleteRead, read_bucket
from ..redact import redact
from .activity import Activity
from .model import Fleet

__all__ = ["Follower"]

log = logging.getLogger(__name__)

RESYNC_S = 600.0
"""A complete read of the inventory this often, whatever the live messages said (a message lost is repaired)."""
TICK_S = 0.25
"""Changes of hosts reach the browsers at most this late (feed items go at once)."""
HISTORY = 2000
"""Messages of the event and audit streams read at start, for the feed and the volumes' audit."""
CATALOG_EVERY_S = 30.0
"""The catalog's totals are read again at most this often, after a backup completes or is forgotten."""
POLICIES_EVERY_S = 10.0
VIEWS_EVERY_S = 15.0
"""The agents' own policy views (`<prefix>.all.policies`) are asked again at most this often."""
GATHER_WINDOW_S = 2.0
HISTORY_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 5.0

_EVENT = BoundedDecoder(VolumeEvent, max_bytes=1 << 20, what="The event")
_REPLY = BoundedDecoder(Reply, what="The outcome")
_ENTRY = BoundedDecoder(PolicyEntry, what="The policy entry")
_POLICY = BoundedDecoder(BackupPolicy, what="The policy")


class _Stored(msgspec.Struct):
    """The two fields of a catalog record the totals need (the rest is skipped)."""

    host: str
    stored_size: int


_STORED = BoundedDecoder(_Stored, max_bytes=1 << 20, what="The record")

Broadcast = Callable[[str, Any], None]


class Follower:
    """Keeps `fleet` and `activity` current; calls `broadcast(kind, data)` for the browsers."""

    def __init__(self, client: AgentClient, broadcast: Broadcast) -> None:
        self.client, self.s, self.broadcast = client, client.subjects, broadcast
        self.fleet, self.activity = Fleet(), Activity()
        self.policies: dict[str, PolicyEntry] = {}
        self.bad_messages = 0
        self._raw: dict[str, dict[str, bytes]] = {}
        self._held: list[Msg] | None = []
        self._changed: set[str] = set()
        self._stale: set[str] = set()
        self._grid: dict[str, list[Any]] = {}
        self._summary_sent = b""
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self._catalog_at = 0.0
        self._catalog_due = False
        self._policies_at = 0.0
        self._views: tuple[float, list[PoliciesResult]] | None = None
        self._views_lock = asyncio.Lock()
        self._resync = asyncio.Event()

    # Start and stop

    async def start(self) -> None:
        nc = self.client.nc
        for subject, cb in ((f"{self.s.prefix}.inv.>", self._on_inventory), (f"{self.s.prefix}.evt.>", self._on_event),
                            (f"{self.s.prefix}.res.>", self._on_outcome)):
            self._subs.append(await nc.subscribe(subject, cb=cb, pending_msgs_limit=500_000))
        await nc.flush()
        await self.load()
        await self._history()
        held, self._held = self._held or [], None
        for msg in held:
            await self._dispatch(msg)
        self._tasks = [asyncio.create_task(self._ticker()), asyncio.create_task(self._resyncer())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    def reconnected(self) -> None:
        """Messages may have been missed while the connection was down: read the fleet again."""
        self._resync.set()

    # Complete reads

    async def load(self) -> None:
        """Read the inventory, the catalog's totals and the policies whole."""
        t = time.perf_counter()
        values = await self._inventory_values()
        for attempt in range(3):
            unreadable: list[str] = []
            try:
                snapshots = assemble(values, unreadable)
                break
            except IncompleteInventory:
                if attempt == 2:
                    raise
                values = await self._inventory_values()
        self._raw = {}
        for key, value in values.items():
            host = key.partition(".")[0]
            if key != host or f"{host}.head" not in values:  # a host's whole value, beside its head, is not kept
                self._raw.setdefault(host, {})[key] = value
        self.fleet.replace(snapshots)
        self.fleet.unreadable = unreadable
        self.fleet.loaded_at = time.time()
        self._changed.update(self.fleet.hosts)
        await asyncio.gather(self.refresh_catalog(), self.refresh_policies())
        log.info("fleet read: %d host(s) in %.0f ms", len(snapshots), (time.perf_counter() - t) * 1000)

    async def _inventory_values(self) -> dict[str, bytes]:
        try:
            return await read_bucket(self.client.nc.jetstream(), self.s.inventory_bucket)
        except nats.js.errors.BucketNotFoundError:
            return {}

    async def refresh_catalog(self) -> None:
        try:
            values = await read_bucket(self.client.nc.jetstream(), self.s.catalog_bucket)
        except nats.js.errors.BucketNotFoundError:
            values = {}
        totals: dict[str, tuple[int, int]] = {}
        for raw in values.values():
            try:
                r = _STORED.decode(raw)
            except msgspec.DecodeError:
                self.bad_messages += 1
                continue
            n, b = totals.get(r.host, (0, 0))
            totals[r.host] = (n + 1, b + r.stored_size)
        self.fleet.stored = totals
        self._catalog_at = time.monotonic()
        self._changed.update(totals)

    async def refresh_policies(self, max_age: float = 0.0) -> dict[str, PolicyEntry]:
        if max_age and time.monotonic() - self._policies_at < max_age:
            return self.policies
        try:
            values = await read_bucket(self.client.nc.jetstream(), self.s.policies_bucket)
        except nats.js.errors.BucketNotFoundError:
            values = {}
        entries = {}
        for key, raw in values.items():
            try:
                entries[key] = _ENTRY.decode(raw)
            except msgspec.DecodeError:
                continue
        self.policies, self._policies_at = entries, time.monotonic()
        return entries

    async def _history(self) -> None:
        """The newest events and outcomes, oldest first, into the feed and the audit."""
        for stream, subjects, on in ((self.s.res_stream, f"{self.s.prefix}.res.>", self._outcome_bytes),
                                     (self.s.evt_stream, f"{self.s.prefix}.evt.>", self._event_bytes)):
            try:
                async for data, at in _recent(self.client, stream, subjects, HISTORY):
                    on(data, at, quiet=True)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("the history of %s was not read: %s", stream, redact(str(exc)) or type(exc).__name__)

    # Live messages

    async def _on_inventory(self, msg: Msg) -> None:
        await self._dispatch(msg)

    async def _on_event(self, msg: Msg) -> None:
        await self._dispatch(msg)

    async def _on_outcome(self, msg: Msg) -> None:
        await self._dispatch(msg)

    async def _dispatch(self, msg: Msg) -> None:
        if self._held is not None:
            self._held.append(msg)
            return
        family = msg.subject[len(self.s.prefix) + 1:].partition(".")[0]
        if family == "inv":
            self._inventory_message(msg.subject[len(self.s.prefix) + 5:], msg.data)
        elif family == "evt":
            self._event_bytes(msg.data, None)
        elif family == "res":
            self._outcome_bytes(msg.data, None)

    def _inventory_message(self, key: str, data: bytes) -> None:
        host, _, rest = key.partition(".")
        keys = self._raw.setdefault(host, {})
        if rest == "" and f"{host}.head" in keys:
            return  # the whole snapshot for older readers: the head and chunks say the same
        keys[key] = data
        if rest not in ("", "head"):
            return  # a chunk: its head follows
        unreadable: list[str] = []
        try:
            snapshots = assemble(keys, unreadable)
        except IncompleteInventory:
            return  # a chunk this head names has not come yet: the next head will do
        if unreadable:
            self.bad_messages += 1
            return
        for s in snapshots:
            self._take(s, keys)

    def _take(self, s: InventorySnapshot, keys: dict[str, bytes]) -> None:
        old = self.fleet.hosts.get(s.host)
        if not self.fleet.put(s):
            return
        head = f"{s.host}.head"
        if head in keys:  # forget chunks the head no longer names (the layout shrank)
            wanted = {head, s.host} | {f"{s.host}.chunk.{i}" for i in range(len(self._chunks_of(keys[head])))}
            for k in [k for k in keys if k not in wanted]:
                del keys[k]
        if old is None or old.snapshot.volumes != s.volumes or old.snapshot.insecure != s.insecure \
                or old.snapshot.rejected_policies != s.rejected_policies:
            self._changed.add(s.host)

    @staticmethod
    def _chunks_of(raw: bytes) -> list[Any]:
        try:
            return list(msgspec.json.decode(raw, type=dict).get("chunks") or [])
        except msgspec.DecodeError:
            return []

    def _event_bytes(self, data: bytes, at: str | None, *, quiet: bool = False) -> None:
        try:
            e = _EVENT.decode(data)
        except msgspec.DecodeError:
            self.bad_messages += 1
            return
        item = self.activity.event(e, data)
        if item is not None and item["kind"] in ("backup", "restore") and "expected" not in item:
            item["expected"] = self._expected(e.host, e.volume)
        if e.kind in ("backup.completed", "volume.removed") and not quiet:
            self._catalog_due = True
        if item is not None and not quiet:
            self.broadcast("feed", item)

    def _expected(self, host: str, volume: str) -> int | None:
        """About how many tar bytes a backup of the volume makes: its size, else its last backup's."""
        v = self.fleet.volume(host, volume)
        if v is None:
            return None
        return v.size or (v.last_backup.size if v.last_backup else None) or None

    def _outcome_bytes(self, data: bytes, at: str | None, *, quiet: bool = False) -> None:
        try:
            r = _REPLY.decode(data)
        except msgspec.DecodeError:
            self.bad_messages += 1
            return
        item = self.activity.outcome(r, at, data)
        if r.op == "forget" and not quiet:
            self._catalog_due = True
        if item is not None and not quiet:
            self.broadcast("feed", item)

    # What the browsers get

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
                if self._catalog_due and time.monotonic() - self._catalog_at > CATALOG_EVERY_S:
                    self._catalog_due = False
                    await self.refresh_catalog()
            except Exception:  # the page goes on; the log says what broke
                log.exception("telling the browsers what changed failed")

    def tick(self, now: datetime | None = None) -> None:
        """Tell the browsers what changed: the hosts whose figures or staleness changed, and the summary."""
        now = now or datetime.now(UTC)
        stale = self.fleet.stale_hosts(now)
        changed = self._changed | (stale ^ self._stale)
        self._changed, self._stale = set(), stale
        summary = self.fleet.summary(now)
        grid = {g[0]: g for g in summary.pop("grid")}
        cells = [g for h, g in grid.items() if self._grid.get(h) != g]
        gone = [h for h in self._grid if h not in grid]
        self._grid = grid
        encoded = msgspec.json.encode({k: v for k, v in summary.items() if k != "at"})
        if encoded != self._summary_sent or cells or gone or changed:
            self._summary_sent = encoded
            self.broadcast("fleet", {"summary": summary, "cells": cells, "gone": gone, "changed": sorted(changed)})

    async def _resyncer(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), RESYNC_S)
            self._resync.clear()
            try:
                await self.load()
            except (nats.errors.Error, IncompleteRead, IncompleteInventory, TimeoutError) as exc:
                log.warning("reading the fleet again failed: %s", redact(str(exc)) or type(exc).__name__)

    # Read ops, asked of the agents on behalf of a page

    async def policy_views(self) -> list[PoliciesResult]:
        """Every agent's own view of the policies (`<prefix>.all.policies`), asked at most every VIEWS_EVERY_S."""
        async with self._views_lock:
            if self._views is not None and time.monotonic() - self._views[0] < VIEWS_EVERY_S:
                return self._views[1]
            replies = await self.client.gather("policies", {}, window=GATHER_WINDOW_S)
            views = []
            for r in replies:
                try:
                    views.append(result_as(r, PoliciesResult))
                except ValueError:
                    continue
            self._views = (time.monotonic(), views)
            return views

    async def host_policies(self, host: str, volume: str | None = None) -> PoliciesResult | str:
        """The host's `policies` answer, or why there is none (a sentence)."""
        try:
            reply = await self.client.request(host, "policies", {"volume": volume} if volume else {},
                                              timeout=REQUEST_TIMEOUT_S)
            return result_as(reply, PoliciesResult)
        except (NoAgent, ValueError) as exc:
            return redact(str(exc))

    async def host_backups(self, host: str, volume: str | None = None) -> BackupsResult | str:
        """The backups `host` can restore (its own and the shared store's), or why there are none to show."""
        body: dict[str, Any] = {"volume": volume} if volume else {"made_here": True}
        try:
            reply = await self.client.request(host, "backups", body, timeout=REQUEST_TIMEOUT_S)
            return result_as(reply, BackupsResult)
        except (NoAgent, ValueError) as exc:
            return redact(str(exc))

    def policy(self, name: str) -> BackupPolicy | None:
        entry = self.policies.get(name)
        if entry is None or not entry.body:
            return None
        try:
            return _POLICY.decode(entry.body)
        except msgspec.DecodeError:
            return None


async def _recent(client: AgentClient, stream: str, subjects: str, n: int) -> AsyncIterator[tuple[bytes, str | None]]:
    """The last `n` messages of `stream` (data, RFC 3339 time), oldest first, through an ephemeral pull consumer
    (a reader may make those on the event and audit streams); as many as arrive within HISTORY_TIMEOUT_S."""
    js = client.nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return
    last, first = info.state.last_seq, info.state.first_seq
    if not info.state.messages:
        return
    name = f"web_{uuid.uuid4().hex}"
    await js.add_consumer(stream, config=ConsumerConfig(
        name=name, filter_subject=subjects, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(first, last - n + 1), ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
        mem_storage=True, num_replicas=1))
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    try:
        async with asyncio.timeout(HISTORY_TIMEOUT_S):
            seen = 0
            while seen < last:
                try:
                    msgs = await sub.fetch(256, timeout=1.0)
                except nats.errors.TimeoutError:
                    break
                for m in msgs:
                    seen = m.metadata.sequence.stream
                    ts = m.metadata.timestamp
                    yield m.data, ts.isoformat() if ts else None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(js.delete_consumer(stream, name), 2.0)
