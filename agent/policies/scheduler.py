"""Runs the policies: each covered volume backed up at its slot (plus its offset), at most `--max-backups` at once,
never twice at once, a missed slot once; then the policy's keep rules applied to what that policy made.

Each run is an ordinary backup (`Backups.backup_locked`, trigger `schedule`, the policy's name in the record), with
the same events and an outcome on `<prefix>.res.<host>.backup` under the id `schedule.<policy>.<volume>.<slot>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from contracts import BackupRecord, BackupRequest
from contracts.labels import SCHEDULE
from contracts.retention import retain, to_forget

from ..backup.backups import Backups
from ..errors import AgentError
from ..locks import KeyedLocks
from ..tasks import Tasks, cancel_and_wait
from ..typing import Engine, LocalRunner, Metrics, Notifier
from .book import PolicyBook
from .coverage import Rule, covered, label_rules, rules_of
from .ledger import Ledger, is_failing, overdue_reason
from .timing import Due, next_due, offset_s

__all__ = ["Scheduler"]

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 30.0
MIN_SLEEP_S = 0.05
RETRY_S = 5.0
# A poke (a volume made or removed, a policy changed) is looked at after this, so that a burst of changes (a backlog
# of creates, a compose project coming up) makes one look, not one per event: a look lists every volume and
# container, and nothing a new volume is due for is that urgent.
POKE_SETTLE_S = 0.5
# ...or after this many times as long as the last look took: looks at many volumes take at most a tenth of the time.
POKE_SETTLE_LOOKS = 10


class Scheduler:
    """The loop that starts scheduled backups; `poke()` makes it look again now (a policy or volume changed)."""

    def __init__(
        self, engine: Engine, locks: KeyedLocks, backups: Backups, book: PolicyBook, ledger: Ledger,
        runner: LocalRunner, tasks: Tasks, *, host: str, on_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None, notifier: Notifier | None = None,
    ) -> None:
        self.engine = engine
        self.locks = locks
        self.backups = backups
        self.book = book
        self.ledger = ledger
        self.runner = runner
        self.tasks = tasks
        self.host = host
        self.on_change = on_change
        self.metrics = metrics
        self.notifier = notifier
        self.label_rules: list[Rule] = []
        self._cache: dict[tuple[str, str], tuple[Rule, datetime, Due]] = {}
        self._bus_rules: tuple[int, list[Rule]] = (-1, [])
        self._wake = asyncio.Event()
        self._stopping = False
        self._exported: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._told_running: set[tuple[str, str]] = set()
        self._look_s = 0.0
        """How long the last look's Engine calls took."""

    async def start(self) -> None:
        """Load the saved state and take a first look (so the inventory says what covers what from the start)."""
        if self._task is None:
            self.ledger.load()
            try:
                await self.evaluate(datetime.now(UTC))
            except AgentError as exc:  # the loop looks again
                log.warning("schedule.evaluation_failed", error=exc.message)
            self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Start nothing more (running backups are drained with the other tasks; queued ones end)."""
        self._stopping = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.ledger.save()

    def poke(self) -> None:
        self._wake.set()

    # EventHandler: a volume made or removed, a container with a schedule label made or gone.
    async def on_docker_event(self, evt: dict[str, Any]) -> None:
        attrs = (evt.get("Actor") or {}).get("Attributes") or {}
        if evt.get("Type") == "volume" or (evt.get("Type") == "container" and SCHEDULE in attrs
                                           and evt.get("Action") in ("create", "destroy", "rename")):
            self.poke()

    async def on_resync(self) -> None:
        self.poke()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                sleep_s = await self.tick()
            except AgentError as exc:  # Docker is away: look again soon
                log.warning("schedule.evaluation_failed", error=exc.message)
                sleep_s = RETRY_S
            except Exception:  # a bug: said, and the schedule goes on
                log.exception("schedule.crashed")
                sleep_s = RETRY_S
            settle_s = max(POKE_SETTLE_S, POKE_SETTLE_LOOKS * self._look_s)
            until = loop.time() + sleep_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep_s)
                await asyncio.sleep(min(settle_s, until - loop.time()))  # never past a slot that is due

    def rules(self) -> list[Rule]:
        changes, rules = self._bus_rules
        if changes != self.book.changes:
            rules = rules_of(self.book.accepted)
            self._bus_rules = (self.book.changes, rules)
        return rules + self.label_rules

    async def evaluate(self, now: datetime) -> dict[str, list[Rule]]:
        """Which rules cover which volume here, now (two Engine calls)."""
        started = time.monotonic()
        volumes = await self.engine.volume_list({})
        containers = await self.engine.containers({"label": [SCHEDULE]})
        self._look_s = time.monotonic() - started
        self.label_rules, self.ledger.label_rejected = label_rules(containers)
        cover = covered(self.rules(), self.host, volumes)
        if self.ledger.cover(cover, now):
            self.on_change()
        return cover

    async def tick(self) -> float:
        """Start what is due; seconds until the next slot (at most MAX_SLEEP_S)."""
        now = datetime.now(UTC)
        cover = await self.evaluate(now)
        wake = now + timedelta(seconds=MAX_SLEEP_S)
        per_policy: dict[str, int] = {}
        for volume, rules in cover.items():
            for rule in rules:
                per_policy[rule.name] = per_policy.get(rule.name, 0) + 1
                key = (rule.name, volume)
                due = self.due(rule, volume, now)
                if key in self.ledger.running:
                    if due.at <= now and key not in self._told_running:
                        self._told_running.add(key)
                        log.info("schedule.still_running", policy=rule.name, volume=volume, slot=due.slot.isoformat())
                elif due.at <= now:
                    self._start(rule, volume, due)
                else:
                    wake = min(wake, due.at)
                await self._check_overdue(rule, volume, now)
        for key in [k for k in self._cache if k not in self.ledger.covered_pairs]:
            del self._cache[key]
        self._told_running &= self.ledger.running
        if self.metrics is not None:
            self.metrics.coverage(per_policy, sum(1 for rules in cover.values() if not rules))
            runs = self.next_runs()
            for (policy, volume), at in runs.items():
                self.metrics.next_run(policy, volume, at.timestamp())
            for policy, volume in self._exported - set(runs):
                self.metrics.next_run(policy, volume, None)
            self._exported = set(runs)
        self.ledger.save()
        return max(MIN_SLEEP_S, (wake - datetime.now(UTC)).total_seconds())

    def next_runs(self) -> dict[tuple[str, str], datetime]:
        """(policy, volume) -> when it runs next, as of the last look."""
        return {key: due.at for key, (_, _, due) in self._cache.items() if key in self.ledger.covered_pairs}

    def due(self, rule: Rule, volume: str, now: datetime) -> Due:
        """The next run of (rule, volume): computed again only when it has come, or the rule or the last run
        changed (a look at 2,000 volumes costs little when nothing is due)."""
        state = self.ledger.get(rule.name, volume, now)
        key = (rule.name, volume)
        cached = self._cache.get(key)
        # The same rule as when it was cached: its schedule is the one the state is counted in already.
        if cached is not None and cached[0] == rule and cached[1] == (state.last_slot or state.since) \
                and cached[2].at > now:
            return cached[2]
        offset = offset_s(rule.name, self.host, volume, rule.window_s)
        self.ledger.schedule_is(state, rule.schedule, now - timedelta(seconds=offset))
        done_through = state.last_slot or state.since
        due = next_due(rule.schedule, offset, done_through=done_through, now=now)
        self._cache[key] = (rule, done_through, due)
        return due

    def _start(self, rule: Rule, volume: str, due: Due) -> None:
        key = (rule.name, volume)
        self.ledger.running.add(key)
        self._told_running.discard(key)
        if due.missed:
            log.info("schedule.catching_up", policy=rule.name, volume=volume, slot=due.slot.isoformat())
        self.tasks.start(f"schedule:{rule.name}:{volume}", self._run(rule, volume, due))

    async def _run(self, rule: Rule, volume: str, due: Due) -> None:
        key = (rule.name, volume)
        cmd_id = f"schedule.{rule.name}.{volume}.{due.slot.astimezone(UTC):%Y%m%dT%H%M%SZ}"
        made: list[BackupRecord] = []
        error: str | None = None
        finished = False
        try:
            # Queued for one of the --max-backups slots; a run still queued when the agent stops starts nothing.
            async with self.backups.slot():
                if self._stopping:
                    return
                with structlog.contextvars.bound_contextvars(trigger="schedule", policy=rule.name, volume=volume):
                    outcome = await self.runner.local("backup", cmd_id, lambda: self._backup(rule, volume, made),
                                                      caller=f"policy:{rule.name}")
            error, finished = (outcome.error.message if outcome.error is not None else None), True
        finally:
            # Cut short by shutdown before the backup was made: not recorded, so the next start runs it (once).
            self.ledger.running.discard(key)
            if finished or made:
                before = self.ledger.get(rule.name, volume, datetime.now(UTC))
                was_told, was_failing = before.overdue_told, is_failing(before)
                # Slots that came while it ran are covered by this run: a late backup is not started twice.
                slot = max(due.slot, rule.schedule.last_at_or_before(datetime.now(UTC) - (due.at - due.slot)))
                self.ledger.finished(rule.name, volume, slot, backup_id=made[0].backup_id if made else None,
                                     error=None if made else error)
                self.ledger.save()
                if self.notifier is not None:
                    if made and (was_told or was_failing):
                        await self.notifier.recovered(volume, rule.name)
                    elif not made and error is not None and not was_failing:  # told once, when it starts failing
                        await self.notifier.backup_failed(volume, error, trigger="schedule", policy=rule.name)
            self.on_change()
            self.poke()

    async def _backup(self, rule: Rule, volume: str, made: list[BackupRecord]) -> BackupRecord:
        p = rule.policy
        req = BackupRequest(volume=volume, compression=p.compression, store=p.store,
                            stop_containers=p.stop_containers, encrypt_to=list(p.encrypt_to))
        async with self.locks.hold(volume):  # the caller holds a backup slot
            record = await self.backups.backup_locked(req, trigger="schedule", policy=rule.name)
            made.append(record)
            try:
                await self._retain(rule, record)
            except AgentError as exc:  # the backup is made; the old ones go next time
                log.warning("schedule.retention_failed", policy=rule.name, volume=volume, error=exc.message)
        return record

    async def _retain(self, rule: Rule, made: BackupRecord) -> None:
        """Apply the policy's keep rules to the backups it made of the volume on this host in that store; the
        one just made, complete, always stays."""
        store = self.backups.stores[made.store]
        mine = [r for r in await store.catalog(made.volume) if r.host == self.host and r.policy == rule.name]
        if not any(r.backup_id == made.backup_id for r in mine):
            mine.append(made)
        for old in to_forget(retain(mine, rule.policy.keep, rule.policy.timezone)):
            if old.backup_id == made.backup_id:
                continue
            await store.forget(old.backup_id)
            self.backups.on_forget(old)
            log.info("backup.pruned", old=old.backup_id, policy=rule.name)

    async def _check_overdue(self, rule: Rule, volume: str, now: datetime) -> None:
        """Tell once when (policy, volume) has had no success for twice the interval, failing or not."""
        state = self.ledger.get(rule.name, volume, now)
        if state.overdue_told or (rule.name, volume) in self.ledger.running:
            return
        reason = overdue_reason(state, rule.interval_s, rule.window_s, now)
        if reason is None:
            return
        self.ledger.told(state)
        log.warning("schedule.overdue", policy=rule.name, volume=volume, reason=reason)
        if self.notifier is not None:
            await self.notifier.overdue(volume, rule.name, reason)
        self.on_change()
