"""What a policy asks the scheduler to run for each volume it covers: a `Job` per kind, one scheduler for all.

    kind     op        ids                                   ledger                     gate
    backup   backup    schedule.<policy>.<volume>.<slot>     <data dir>/schedule.json   a `--max-backups` slot
    drill    verify    verify.<policy>.<volume>.<slot>       <data dir>/verify.json     a `--max-backups` slot

The scheduler (`scheduler.py`) owns the slots, their offsets, catch-up after downtime, the running set and the
ledgers; a job says when it runs for a rule (`timing`), what it needs (`prepare`: nothing to do is not a
failure), how it runs, and what it tells once it has run.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog

from contracts import BackupRecord, BackupRequest
from contracts.policies import guard_of
from contracts.retention import retain, to_forget

from ..backup.backups import Backups
from ..backup.drills import Drills
from ..errors import AgentError
from ..locks import KeyedLocks
from ..typing import Notifier
from .coverage import Rule
from .guard import baseline, held_because
from .ledger import Ledger
from .timing import Timing

__all__ = ["BackupJob", "DrillJob", "Job"]

log = structlog.get_logger(__name__)


class Job(Protocol):
    kind: str
    op: str
    """The op its outcomes are published as (`<prefix>.res.<host>.<op>`)."""
    id_prefix: str
    """Its outcomes' ids: `<id_prefix>.<policy>.<volume>.<slot>`."""
    ledger: Ledger
    """Its runs, by (policy, volume); the backups' ledger also says when one is overdue (told by the scheduler)."""

    def timing(self, rule: Rule) -> Timing | None:
        """When it runs for `rule` (None: the rule does not ask for it)."""
        ...
    def gate(self) -> AbstractAsyncContextManager[None]:
        """Waited for before a run starts (the backup slots)."""
        ...
    async def prepare(self, rule: Rule, volume: str) -> Any:
        """What a run needs; None: nothing to do this time (the slot counts as done, without an outcome)."""
        ...
    async def run(self, rule: Rule, volume: str, prepared: Any, made: list[str]) -> msgspec.Struct:
        """Run; appends to `made` the id of what it made or verified once that is done."""
        ...
    async def finished(self, rule: Rule, volume: str, *, made: bool, error: str | None, was_failing: bool,
                       was_told: bool) -> None:
        """Tell what needs telling (the ledger has recorded the run)."""
        ...


class BackupJob:
    """A scheduled backup, then the policy's keep rules, unless the bad-backup guard holds them (`guard.py`)."""

    kind, op, id_prefix = "backup", "backup", "schedule"

    def __init__(self, backups: Backups, locks: KeyedLocks, ledger: Ledger, *, host: str,
                 notifier: Notifier | None = None) -> None:
        self.backups, self.locks, self.ledger, self.host, self.notifier = backups, locks, ledger, host, notifier

    def timing(self, rule: Rule) -> Timing | None:
        return rule.backups

    def gate(self) -> AbstractAsyncContextManager[None]:
        return self.backups.slot()

    async def prepare(self, rule: Rule, volume: str) -> Any:
        return True

    async def run(self, rule: Rule, volume: str, prepared: Any, made: list[str]) -> BackupRecord:
        p = rule.policy
        req = BackupRequest(volume=volume, compression=p.compression, store=p.store,
                            stop_containers=p.stop_containers, encrypt_to=list(p.encrypt_to))
        async with self.locks.hold(volume):  # the caller holds a backup slot
            record = await self.backups.backup_locked(req, trigger="schedule", policy=rule.name)
            made.append(record.backup_id)
            try:
                await self.retain(rule, record)
            except AgentError as exc:  # the backup is made; the old ones go next time
                log.warning("schedule.retention_failed", policy=rule.name, volume=volume, error=exc.message)
        return record

    async def retain(self, rule: Rule, made: BackupRecord) -> None:
        """Apply the policy's keep rules to the backups it made of the volume on this host in that store (the one
        just made, complete, always stays), if the guard lets them run."""
        store = self.backups.stores[made.store]
        mine = [r for r in await store.catalog(made.volume) if r.host == self.host and r.policy == rule.name]
        state = self.ledger.get(rule.name, made.volume, datetime.now(UTC))
        held = held_because(guard_of(rule.policy), made, baseline(mine, made, state.accepted))
        if self.ledger.guarded(state, held=held, accepted=None if held else made.backup_id):
            log.warning("schedule.retention_held", policy=rule.name, volume=made.volume, reason=held)
            if self.notifier is not None:
                await self.notifier.retention_held(made.volume, rule.name, held or "")
        self.ledger.save()
        if held is not None:
            return
        if not any(r.backup_id == made.backup_id for r in mine):
            mine.append(made)
        for old in to_forget(retain(mine, rule.policy.keep, rule.policy.timezone)):
            if old.backup_id == made.backup_id:
                continue
            await store.forget(old.backup_id)
            self.backups.on_forget(old)
            log.info("backup.pruned", old=old.backup_id, policy=rule.name)

    async def finished(self, rule: Rule, volume: str, *, made: bool, error: str | None, was_failing: bool,
                       was_told: bool) -> None:
        if self.notifier is None:
            return
        if made and (was_told or was_failing):
            await self.notifier.recovered(volume, rule.name)
        elif not made and error is not None and not was_failing:  # told once, when it starts failing
            await self.notifier.backup_failed(volume, error, trigger="schedule", policy=rule.name)


class DrillJob:
    """A restore drill of the newest backup this host made of the volume in the policy's store (`drills.py`);
    nothing to do while there is none. The drill tells of its own result (per volume, whoever asked for it)."""

    kind, op, id_prefix = "drill", "verify", "verify"

    def __init__(self, drills: Drills, backups: Backups, ledger: Ledger, *, host: str) -> None:
        self.drills, self.backups, self.ledger, self.host = drills, backups, ledger, host

    def timing(self, rule: Rule) -> Timing | None:
        return rule.verify

    def gate(self) -> AbstractAsyncContextManager[None]:
        return self.backups.slot()  # a drill reads a whole backup and writes it out again: as heavy as a backup

    async def prepare(self, rule: Rule, volume: str) -> Any:
        store = self.backups.stores[rule.policy.store]
        newest = next((r for r in await store.catalog(volume) if r.host == self.host), None)
        return None if newest is None else (store, newest)

    async def run(self, rule: Rule, volume: str, prepared: Any, made: list[str]) -> msgspec.Struct:
        store, record = prepared
        result = await self.drills.drill(store, record, policy=rule.name)
        made.append(record.backup_id)
        return result

    async def finished(self, rule: Rule, volume: str, *, made: bool, error: str | None, was_failing: bool,
                       was_told: bool) -> None:
        return None


if TYPE_CHECKING:  # mypy proves that both are Jobs
    def _jobs(b: BackupJob, d: DrillJob) -> list[Job]:
        return [b, d]
