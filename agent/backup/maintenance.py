"""Repository maintenance of restic stores, once for the fleet: `restic prune` and `restic check
--read-data-subset=<subset>` at the slots of the store's `maintenance` schedules (cron, UTC; store_config.py).

Every agent whose stores file defines the store wakes at each slot; one of them runs the task. They agree through
a lease in the KV bucket `<prefix>_maintenance`, one key per repository (restic's repository id):

- the key is absent (or expired): `create` it (a KV create fails if another agent made it first): the lease is
  ours; or it holds a finished run: take it by compare-and-set on the revision read;
- it says another agent is running a task now, or that this task's slot is done already: skip the slot, and say
  which host holds it or ran it (`repository.maintenance_skipped`);
- the holder renews it every TTL/3 by compare-and-set while restic runs, then writes the slot as done (so that an
  agent that wakes late in the same slot does not run it again). The bucket's entries expire a TTL after their
  last write: a holder that died frees the repository after at most a TTL.

What the lease costs and protects: any agent identity may write any key of the bucket (any agent may hold it), so
one can hold or clear another's lease. The worst is a skipped or delayed maintenance, or two agents running it in
one slot; never two `prune`s at once in the repository: restic's own exclusive lock refuses the second (its run
fails, is counted and notified, and nothing is lost). Backups of other hosts wait for restic's lock while a prune
or check holds it (restic.py: LOCK_WAIT_S), then fail as `unavailable`: schedule maintenance away from backups.

Results: metrics (`volume_agent_repository_maintenance_*`, `..._check_success_timestamp_seconds{store}`), a
notification when a task starts failing and when it passes again, and log lines `repository.pruned` /
`repository.checked` with how long restic ran and how long the lease was held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec
import nats.errors
import nats.js.errors
import structlog

from contracts.cron import CronSchedule, parse_schedule

from ..errors import AgentError
from ..lease import LeaseEntry, LeaseKV
from .restic import Restic
from .restic_store import ResticStore
from .store_config import Maintenance

__all__ = ["MaintenanceRecorder", "RepositoryMaintenance", "Task", "maintainers"]

log = structlog.get_logger(__name__)

Task = Literal["prune", "check"]
LEASE_TTL_S = 60.0
"""The bucket's max age: a lease not renewed for this long is gone."""
ATTEMPT_S = 5.0
# A slot further back than this when the agent gets to it (it was busy, or the machine slept) is let go.
LATE_S = 300.0
PASSING = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)


class LeaseValue(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The key's value: who runs a task now (`task` set), and the newest slot of each task done."""

    host: str
    instance: str
    task: str | None = None
    slot: str | None = None
    started_at: str | None = None
    renewed_at: str | None = None
    done: dict[str, str] = {}
    """task -> its newest slot done (ISO, UTC)."""
    done_by: dict[str, str] = {}
    """task -> the host that ran that slot."""


class MaintenanceRecorder(Protocol):
    """Where results go (agent/metrics.py Metrics, agent/notify.py Notifier)."""

    def maintenance_finished(self, store: str, task: str, *, result: str, seconds: float) -> None: ...


class MaintenanceNotifier(Protocol):
    async def maintenance_failed(self, store: str, task: str, error: str) -> None: ...
    async def maintenance_recovered(self, store: str, task: str) -> None: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


class RepositoryMaintenance:
    """The maintenance loop of one restic store on this agent."""

    def __init__(self, store: str, restic: Restic, repository_id: Callable[[], Awaitable[str]], cfg: Maintenance,
                 open_kv: Callable[[], Awaitable[LeaseKV | None]], *, host: str,
                 metrics: MaintenanceRecorder | None = None, notifier: MaintenanceNotifier | None = None,
                 ttl_s: float = LEASE_TTL_S) -> None:
        self.store, self.restic, self.repository_id, self.cfg = store, restic, repository_id, cfg
        self.open_kv, self.host, self.metrics, self.notifier, self.ttl_s = open_kv, host, metrics, notifier, ttl_s
        self.instance = uuid.uuid4().hex
        self.schedules: dict[Task, CronSchedule] = {}
        if cfg.prune:
            self.schedules["prune"] = parse_schedule(cfg.prune)
        if cfg.check:
            self.schedules["check"] = parse_schedule(cfg.check)
        self.failing: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._told_no_bucket = False
        self._kv: LeaseKV | None = None

    def start(self) -> None:
        if self._task is None and self.schedules:
            self._task = asyncio.create_task(self._loop(), name=f"maintenance:{self.store}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        after = datetime.now(UTC)
        while True:
            due = sorted((s.next_after(after), task) for task, s in self.schedules.items())
            slot, task = due[0]
            await asyncio.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
            after = slot
            if (datetime.now(UTC) - slot).total_seconds() > LATE_S:
                log.info("repository.maintenance_late", store=self.store, task=task, slot=_iso(slot))
                after = datetime.now(UTC)
                continue
            try:
                await self.run_slot(task, slot)
            except Exception:  # a bug: said, and the schedule goes on
                log.exception("repository.maintenance_crashed", store=self.store, task=task)
            # Slots that came while it ran are covered by this run.
            after = max(after, datetime.now(UTC))

    async def run_slot(self, task: Task, slot: datetime) -> bool:
        """Run `task` for `slot` if this agent wins the lease; True if it ran (made or failed)."""
        try:
            key = await self.repository_id()
        except AgentError as exc:
            await self._ended(task, "failed", 0.0, f"the repository cannot be opened: {exc.message}")
            return True
        kv = self._kv = self._kv or await self.open_kv()
        if kv is None:
            if not self._told_no_bucket:
                self._told_no_bucket = True
                log.warning("repository.maintenance_disabled", store=self.store,
                            why="this agent's NATS user may not make the maintenance bucket (permissions generated "
                                "before it): no maintenance runs here, so that two hosts never run it at once",
                            fix="re-run `volume-agent auth init` and reload the NATS servers")
            return False
        rev = await self._claim(kv, key, task, slot)
        if rev is None:
            return False
        held_since = time.monotonic()
        renewing = asyncio.create_task(self._renew(kv, key, rev, task, slot))
        started = time.monotonic()
        error: str | None = None
        try:
            await self._restic(task)
        except AgentError as exc:
            error = exc.message
        seconds = time.monotonic() - started
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            rev = await renewing
        await self._release(kv, key, rev, task, slot, done=error is None)
        held_s = time.monotonic() - held_since
        event = "repository.pruned" if task == "prune" else "repository.checked"
        if error is None:
            log.info(event, store=self.store, slot=_iso(slot), seconds=round(seconds, 3),
                     lease_held_s=round(held_s, 3))
        else:
            log.warning(f"repository.{task}_failed", store=self.store, slot=_iso(slot), error=error,
                        seconds=round(seconds, 3), lease_held_s=round(held_s, 3))
        await self._ended(task, "ok" if error is None else "failed", seconds, error)
        return True

    async def _restic(self, task: Task) -> None:
        if task == "prune":
            await self.restic.run("prune", doing="pruning the repository (maintenance)")
        else:
            await self.restic.run("check", f"--read-data-subset={self.cfg.check_subset}",
                                  doing="checking the repository (maintenance)")

    async def _ended(self, task: Task, result: str, seconds: float, error: str | None) -> None:
        if self.metrics is not None:
            self.metrics.maintenance_finished(self.store, task, result=result, seconds=seconds)
        if self.notifier is None:
            return
        if error is not None and task not in self.failing:  # told once, when it starts failing
            self.failing.add(task)
            await self.notifier.maintenance_failed(self.store, task, error)
        elif error is None and task in self.failing:
            self.failing.discard(task)
            await self.notifier.maintenance_recovered(self.store, task)

    def _value(self, task: Task, slot: datetime, prev: LeaseValue | None) -> bytes:
        return msgspec.json.encode(LeaseValue(
            host=self.host, instance=self.instance, task=task, slot=_iso(slot), started_at=_now(),
            renewed_at=_now(), done=dict(prev.done) if prev else {}, done_by=dict(prev.done_by) if prev else {}))

    async def _claim(self, kv: LeaseKV, key: str, task: Task, slot: datetime) -> int | None:
        """The lease's revision, ours now; None: another host holds it, or ran this slot (said)."""
        for _ in range(3):
            try:
                async with asyncio.timeout(ATTEMPT_S):
                    entry = await _get(kv, key)
                    prev = _decode(entry)
                    if prev is not None:
                        if prev.done.get(task, "") >= _iso(slot):
                            log.info("repository.maintenance_skipped", store=self.store, task=task, slot=_iso(slot),
                                     why=f"host {prev.done_by.get(task, '?')} ran this slot")
                            return None
                        if prev.task is not None:
                            log.info("repository.maintenance_skipped", store=self.store, task=task, slot=_iso(slot),
                                     why=f"host {prev.host} holds the repository's lease ({prev.task} of slot "
                                         f"{prev.slot}, renewed {prev.renewed_at})")
                            return None
                    value = self._value(task, slot, prev)
                    if entry is None:
                        return await kv.create(key, value)
                    return await kv.update(key, value, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another agent wrote first: look again
            except PASSING as exc:
                log.warning("repository.maintenance_skipped", store=self.store, task=task, slot=_iso(slot),
                            why=f"the lease cannot be taken now ({type(exc).__name__})")
                return None
        log.info("repository.maintenance_skipped", store=self.store, task=task, slot=_iso(slot),
                 why="other hosts keep writing the lease")
        return None

    async def _renew(self, kv: LeaseKV, key: str, rev: int, task: Task, slot: datetime) -> int:
        """Renew every TTL/3 while restic runs; returns the last revision written (on cancellation too)."""
        try:
            while True:
                await asyncio.sleep(self.ttl_s / 3)
                try:
                    async with asyncio.timeout(ATTEMPT_S):
                        prev = _decode(await _get(kv, key))
                        value = msgspec.json.encode(msgspec.structs.replace(prev, renewed_at=_now())) \
                            if prev is not None and prev.instance == self.instance else self._value(task, slot, prev)
                        rev = await kv.update(key, value, last=rev)
                except nats.js.errors.KeyWrongLastSequenceError:
                    # Another agent wrote the key: restic's own lock still keeps two prunes apart.
                    log.warning("repository.maintenance_lease_lost", store=self.store, task=task)
                    return rev
                except PASSING as exc:
                    log.warning("repository.maintenance_lease_not_renewed", store=self.store, task=task,
                                why=type(exc).__name__)
        except asyncio.CancelledError:
            return rev

    async def _release(self, kv: LeaseKV, key: str, rev: int, task: Task, slot: datetime, *, done: bool) -> None:
        """Free the lease; with `done`, the slot is written as run (an agent waking late in it skips it)."""
        try:
            async with asyncio.timeout(ATTEMPT_S):
                prev = _decode(await _get(kv, key))
                if prev is None or prev.instance != self.instance:
                    return
                done_map, by = dict(prev.done), dict(prev.done_by)
                if done:
                    done_map[task], by[task] = _iso(slot), self.host
                await kv.update(key, msgspec.json.encode(LeaseValue(
                    host=self.host, instance=self.instance, renewed_at=_now(), done=done_map, done_by=by)),
                    last=rev)
        except (*PASSING, nats.js.errors.KeyWrongLastSequenceError) as exc:
            log.warning("repository.maintenance_lease_not_released", store=self.store, task=task,
                        why=f"{type(exc).__name__}: it expires by itself")


def maintainers(stores: Iterable[object], open_kv: Callable[[], Awaitable[LeaseKV | None]], *, host: str,
                metrics: MaintenanceRecorder | None, notifier: MaintenanceNotifier | None,
                ttl_s: float) -> list[RepositoryMaintenance]:
    """A maintenance loop (not started) for each restic store among `stores` that asks for maintenance."""
    return [RepositoryMaintenance(s.name, s.restic, s.repository_id, s.cfg.maintenance, open_kv, host=host,
                                  metrics=metrics, notifier=notifier, ttl_s=ttl_s)
            for s in stores if isinstance(s, ResticStore) and s.cfg.maintenance is not None]


async def _get(kv: LeaseKV, key: str) -> LeaseEntry | None:
    try:
        return await kv.get(key)
    except nats.js.errors.KeyNotFoundError:  # KeyDeletedError is one
        return None


def _decode(entry: LeaseEntry | None) -> LeaseValue | None:
    if entry is None or not entry.value:
        return None
    try:
        return msgspec.json.decode(entry.value, type=LeaseValue)
    except msgspec.DecodeError:  # not ours to read: taken over as a free lease
        return None
