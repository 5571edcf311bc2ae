"""What the scheduler knows of each (policy, volume): since when it is covered, its last run and last success,
and what that makes its protection. Kept in `<data dir>/schedule.json` between runs (written atomically, at most
once a second), so a run missed while the agent was down is seen at start, and an overdue volume stays overdue.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog

from contracts import Protection

from ..private_files import open_private, private_dir

if TYPE_CHECKING:
    from contracts.cron import CronSchedule

    from .coverage import Rule

__all__ = ["Ledger", "RunState", "is_failing", "overdue_reason", "protection", "worst"]

log = structlog.get_logger(__name__)

OVERDUE_INTERVALS = 2
_SEVERITY = {"ok": 0, "pending": 1, "running": 1, "suspect": 2, "overdue": 3, "failing": 4, "uncovered": 5}


class RunState(msgspec.Struct, omit_defaults=True):
    since: datetime
    """When the volume came under the policy here: slots before it are not owed."""
    last_slot: datetime | None = None
    """The slot of the last run that finished (well or not)."""
    last_run: datetime | None = None
    last_success: datetime | None = None
    last_backup_id: str | None = None
    last_error: str | None = None
    overdue_told: bool = False
    """An overdue notification went out (sent again only after a success)."""
    schedule: str | None = None
    """The schedule (expression and zone) the slots were counted in: a changed schedule owes no slot of its own
    that came before the change (a fleet-wide edit must not start every host at once)."""
    held: str | None = None
    """Why the bad-backup guard held retention at the last run (`guard.py`); None: it ran."""
    accepted: str | None = None
    """The backup the guard last accepted: the next ones are compared with it."""


def overdue_reason(state: RunState, interval_s: float, window_s: float, now: datetime) -> str | None:
    """Why (policy, volume) is overdue: no success for twice the schedule's interval (plus its spread), or None."""
    base = state.last_success or state.since
    if (now - base).total_seconds() <= OVERDUE_INTERVALS * interval_s + window_s:
        return None
    if state.last_success is None:
        return (f"No successful backup since it came under the policy at {base.isoformat()}, more than twice the "
                f"schedule's interval ({interval_s:g} s) ago.")
    return (f"The last successful backup, at {base.isoformat()}, is older than twice the schedule's interval "
            f"({interval_s:g} s).")


def is_failing(state: RunState) -> bool:
    """The last run failed (no success since)."""
    return state.last_error is not None and (state.last_success is None or state.last_run is None
                                             or state.last_run > state.last_success)


def protection(state: RunState, interval_s: float, window_s: float, now: datetime, *, running: bool
               ) -> tuple[Protection, str | None]:
    """The protection of one (policy, volume), and why when it is not ok."""
    if running:
        return "running", None
    if is_failing(state):
        return "failing", f"The last scheduled backup failed: {state.last_error}"
    if (why := overdue_reason(state, interval_s, window_s, now)) is not None:
        return "overdue", why
    if state.held is not None:
        return "suspect", state.held
    if state.last_success is None:
        return "pending", None
    return "ok", None


def worst(states: list[tuple[Protection, str | None]]) -> tuple[Protection, str | None]:
    if not states:
        return "uncovered", "No backup policy covers this volume."
    return max(states, key=lambda s: _SEVERITY[s[0]])


_KEY_SEP = "\x1f"
_DECODER = msgspec.json.Decoder(dict[str, RunState])


class Ledger:
    """RunState by (policy, volume); `save()` writes it when it changed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.states: dict[tuple[str, str], RunState] = {}
        self.running: set[tuple[str, str]] = set()
        """(policy, volume) pairs whose scheduled backup runs now."""
        self.coverage: dict[str, list[Rule]] = {}
        """The last look: each volume and the rules that cover it."""
        self.covered_pairs: set[tuple[str, str]] = set()
        self.label_rejected: dict[str, str] = {}
        """Container-label policies that are not valid, and why."""
        self._dirty = False

    def cover(self, coverage: dict[str, list[Rule]], now: datetime) -> bool:
        """A new look at the volumes and rules: pairs no longer covered are forgotten (a removed policy or volume
        starts afresh if it comes back), new ones start owing slots from now. True if what is covered changed."""
        before = (set(self.coverage), self.covered_pairs)
        self.coverage = coverage
        self.covered_pairs = {(r.name, v) for v, rules in coverage.items() for r in rules}
        for policy, volume in self.covered_pairs:
            self.get(policy, volume, now)
        self.forget_except(self.covered_pairs | self.running)
        return before != (set(coverage), self.covered_pairs)

    def protection_of(self, volume: str, now: datetime) -> tuple[list[str], Protection, str | None]:
        """The policies that cover `volume`, and its worst protection among them (uncovered: none does)."""
        rules = self.coverage.get(volume, [])
        states = [protection(self.get(r.name, volume, now), r.interval_s, r.window_s, now,
                             running=(r.name, volume) in self.running) for r in rules]
        status, reason = worst(states)
        return [r.name for r in rules], status, reason

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            raw = _DECODER.decode(self.path.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("schedule.state_unreadable", file=str(self.path), error=str(exc))
            return
        self.states = {tuple(k.split(_KEY_SEP, 1)): v for k, v in raw.items() if _KEY_SEP in k}  # type: ignore[misc]

    def get(self, policy: str, volume: str, now: datetime) -> RunState:
        """The state of (policy, volume), made now if it is new to this host."""
        key = (policy, volume)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = RunState(since=now)
            self._dirty = True
        return state

    def finished(self, policy: str, volume: str, slot: datetime, *, backup_id: str | None, error: str | None
                 ) -> RunState:
        now = datetime.now(UTC)
        state = self.get(policy, volume, now)
        state.last_slot, state.last_run = slot, now
        if error is None:
            state.last_success, state.last_backup_id, state.last_error, state.overdue_told = now, backup_id, None, False
        else:
            state.last_error = error
        self._dirty = True
        return state

    def schedule_is(self, state: RunState, schedule: CronSchedule, came_by: datetime) -> None:
        """Note the schedule `state` is counted in; if it changed, its slots up to `came_by` count as done."""
        sig = f"{schedule.expr} @ {schedule.zone}"
        if state.schedule == sig:
            return
        if state.schedule is not None:
            state.last_slot = max(state.last_slot or state.since, schedule.last_at_or_before(came_by))
        state.schedule = sig
        self._dirty = True

    def guarded(self, state: RunState, *, held: str | None, accepted: str | None) -> bool:
        """The guard's verdict on a run: `held` (why) or `accepted` (the backup); True if it newly holds."""
        newly = held is not None and state.held is None
        state.held = held
        if accepted is not None:
            state.accepted = accepted
        self._dirty = True
        return newly

    def told(self, state: RunState) -> None:
        state.overdue_told = True
        self._dirty = True

    def forget_except(self, live: set[tuple[str, str]]) -> None:
        """Drop the state of pairs no longer covered (a removed policy or volume starts afresh if it comes back)."""
        gone = [k for k in self.states if k not in live]
        for k in gone:
            del self.states[k]
        self._dirty = self._dirty or bool(gone)

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        self._dirty = False
        data = msgspec.json.encode({_KEY_SEP.join(k): v for k, v in self.states.items()})
        tmp = self.path.with_suffix(".tmp")
        try:
            private_dir(self.path.parent)
            with open_private(tmp) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            self._dirty = True
            log.warning("schedule.state_not_saved", file=str(self.path), error=exc.strerror or str(exc))
            with contextlib.suppress(OSError):
                tmp.unlink()
