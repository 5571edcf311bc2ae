"""Runs the policies: for each covered volume, each job its policy asks for (`jobs.py`: a backup, then the keep
rules unless the bad-backup guard holds them; a restore drill on the policy's `verify` schedule) at its slot plus
its offset, at most `--max-backups` at once, never twice at once, a missed slot once.

A scheduled backup is an ordinary backup (`Backups.backup_locked`, trigger `schedule`, the policy's name in the
record), with the same events and an outcome on `<prefix>.res.<host>.backup` under the id
`schedule.<policy>.<volume>.<slot>`; a drill's outcome is on `<prefix>.res.<host>.verify`, id
`verify.<policy>.<volume>.<slot>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from contracts.labels import SCHEDULE

from ..backup.backups import Backups
from ..backup.drills import Drills
from ..errors import AgentError
from ..locks import KeyedLocks
from ..tasks import Tasks, cancel_and_wait
from ..typing import Engine, LocalRunner, Metrics, Notifier
from .book import PolicyBook
from .coverage import Rule, covered, label_rules, rules_of
from .jobs import BackupJob, DrillJob, Job
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
    """The loop that starts scheduled jobs; `poke()` makes it look again now (a policy or volume changed)."""

    def __init__(
        self, engine: Engine, locks: KeyedLocks, backups: Backups, book: PolicyBook, ledger: Ledger,
        runner: LocalRunner, tasks: Tasks, *, host: str, on_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None, notifier: Notifier | None = None, drills: Drills | None = None,
        drill_ledger: Ledger | None = None,
    ) -> None:
        """`drills` (and `drill_ledger`, where their runs are kept): run the policies' restore drills (None:
        none is run)."""
        self.engine = engine
        self.book = book
        self.ledger = ledger
        self.runner = runner
        self.tasks = tasks
        self.host = host
        self.on_change = on_change
        self.metrics = metrics
        self.notifier = notifier
        self.backup_job = BackupJob(backups, locks, ledger, host=host, notifier=notifier)
        self.jobs: list[Job] = [self.backup_job]
        self.drill_job: DrillJob | None = None
        if drills is not None:
            self.drill_job = DrillJob(drills, backups, drill_ledger or Ledger(None), host=host)
            self.jobs.append(self.drill_job)
        self.label_rules: list[Rule] = []
        self._cache: dict[tuple[str, str, str], tuple[Rule, datetime, Due]] = {}
        self._bus_rules: tuple[int, list[Rule]] = (-1, [])
        self._wake = asyncio.Event()
        self._stopping = False
        self._exported: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._told_running: set[tuple[str, str, str]] = set()
        self._look_s = 0.0
        """How long the last look's Engine calls took."""

    async def start(self) -> None:
        """Load the saved state and take a first look (so the inventory says what covers what from the start)."""
        if self._task is None:
            for job in self.jobs:
                job.ledger.load()
            try:
                await self.evaluate(datetime.now(UTC))
            except AgentError as exc:  # the loop looks again
                log.warning("schedule.evaluation_failed", error=exc.message)
            self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Start nothing more (running jobs are drained with the other tasks; queued ones end)."""
        self._stopping = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for job in self.jobs:
            job.ledger.save()

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
                async with asyncio.timeout(sleep_s):  # not wait_for: in 3.11 it can swallow the stop's cancel
                    await self._wake.wait()
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
        changed = False
        for job in self.jobs:
            mine = cover if job is self.backup_job else \
                {v: [r for r in rules if job.timing(r) is not None] for v, rules in cover.items()}
            changed = job.ledger.cover(mine, now) or changed
        if changed:
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
                for job in self.jobs:
                    if job.timing(rule) is None:
                        continue
                    key = (rule.name, volume)
                    due = self.due(rule, volume, now, job)
                    if key in job.ledger.running:
                        if due.at <= now and (job.kind, *key) not in self._told_running:
                            self._told_running.add((job.kind, *key))
                            log.info("schedule.still_running", job=job.kind, policy=rule.name, volume=volume,
                                     slot=due.slot.isoformat())
                    elif due.at <= now:
                        self._start(job, rule, volume, due)
                    else:
                        wake = min(wake, due.at)
                await self._check_overdue(rule, volume, now)
        for ckey in [k for k in self._cache if not self._covered(k)]:
            del self._cache[ckey]
        self._told_running = {k for k in self._told_running if self._running(k)}
        if self.metrics is not None:
            self.metrics.coverage(per_policy, sum(1 for rules in cover.values() if not rules))
            runs = self.next_runs()
            for (policy, volume), at in runs.items():
                self.metrics.next_run(policy, volume, at.timestamp())
            for policy, volume in self._exported - set(runs):
                self.metrics.next_run(policy, volume, None)
            self._exported = set(runs)
        for job in self.jobs:
            job.ledger.save()
        return max(MIN_SLEEP_S, (wake - datetime.now(UTC)).total_seconds())

    def _job(self, kind: str) -> Job:
        return next(j for j in self.jobs if j.kind == kind)

    def _covered(self, key: tuple[str, str, str]) -> bool:
        return key[1:] in self._job(key[0]).ledger.covered_pairs

    def _running(self, key: tuple[str, str, str]) -> bool:
        return key[1:] in self._job(key[0]).ledger.running

    def next_runs(self, kind: str = "backup") -> dict[tuple[str, str], datetime]:
        """(policy, volume) -> when its job of `kind` runs next, as of the last look."""
        return {(p, v): due.at for (k, p, v), (_, _, due) in self._cache.items()
                if k == kind and self._covered((k, p, v))}

    def due(self, rule: Rule, volume: str, now: datetime, job: Job | None = None) -> Due:
        """The next run of (rule, volume) of `job` (default: its backup): computed again only when it has come,
        or the rule or the last run changed (a look at 2,000 volumes costs little when nothing is due)."""
        job = job or self.backup_job
        timing = job.timing(rule)
        assert timing is not None
        state = job.ledger.get(rule.name, volume, now)
        key = (job.kind, rule.name, volume)
        cached = self._cache.get(key)
        # The same rule as when it was cached: its schedule is the one the state is counted in already.
        if cached is not None and cached[0] == rule and cached[1] == (state.last_slot or state.since) \
                and cached[2].at > now:
            return cached[2]
        # A drill's offset differs from its backup's: they do not start together.
        salt = rule.name if job is self.backup_job else f"{rule.name}\0{job.kind}"
        offset = offset_s(salt, self.host, volume, timing.window_s)
        job.ledger.schedule_is(state, timing.schedule, now - timedelta(seconds=offset))
        done_through = state.last_slot or state.since
        due = next_due(timing.schedule, offset, done_through=done_through, now=now)
        self._cache[key] = (rule, done_through, due)
        return due

    def _start(self, job: Job, rule: Rule, volume: str, due: Due) -> None:
        key = (rule.name, volume)
        job.ledger.running.add(key)
        self._told_running.discard((job.kind, *key))
        if due.missed:
            log.info("schedule.catching_up", job=job.kind, policy=rule.name, volume=volume, slot=due.slot.isoformat())
        name = "schedule" if job is self.backup_job else job.kind
        self.tasks.start(f"{name}:{rule.name}:{volume}", self._run(job, rule, volume, due))

    async def _run(self, job: Job, rule: Rule, volume: str, due: Due) -> None:
        key = (rule.name, volume)
        timing = job.timing(rule)
        assert timing is not None
        cmd_id = f"{job.id_prefix}.{rule.name}.{volume}.{due.slot.astimezone(UTC):%Y%m%dT%H%M%SZ}"
        made: list[str] = []
        error: str | None = None
        finished = False
        try:
            # Queued for one of the --max-backups slots; a run still queued when the agent stops starts nothing.
            async with job.gate():
                if self._stopping:
                    return
                with structlog.contextvars.bound_contextvars(trigger="schedule", policy=rule.name, volume=volume):
                    prepared = await job.prepare(rule, volume)
                    if prepared is None:  # nothing to do: the slot is done, nothing is published
                        finished = True
                        return
                    outcome = await self.runner.local(job.op, cmd_id, lambda: job.run(rule, volume, prepared, made),
                                                      caller=f"policy:{rule.name}")
            error, finished = (outcome.error.message if outcome.error is not None else None), True
        except AgentError as exc:  # `prepare` could not look (the store is away): a failed run
            error, finished = exc.message, True
        finally:
            # Cut short by shutdown before the job was done: not recorded, so the next start runs it (once).
            job.ledger.running.discard(key)
            if finished or made:
                before = job.ledger.get(rule.name, volume, datetime.now(UTC))
                was_told, was_failing = before.overdue_told, is_failing(before)
                # Slots that came while it ran are covered by this run: a late job is not started twice.
                slot = max(due.slot, timing.schedule.last_at_or_before(datetime.now(UTC) - (due.at - due.slot)))
                job.ledger.finished(rule.name, volume, slot, backup_id=made[0] if made else None,
                                    error=None if made else error)
                job.ledger.save()
                await job.finished(rule, volume, made=bool(made), error=error, was_failing=was_failing,
                                   was_told=was_told)
            self.on_change()
            self.poke()

    async def _check_overdue(self, rule: Rule, volume: str, now: datetime) -> None:
        """Tell once when (policy, volume) has had no backup for twice the interval, failing or not."""
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
