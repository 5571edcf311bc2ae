"""When a (policy, host, volume) runs: the schedule's slot, plus a stable offset within the spread window.

A fleet-wide policy must not start every host's backup in the same second: each (policy, host, volume) gets an
offset in [0, window) from a hash of the three names, the same on every run and every restart. A run missed
while the agent was down runs once, for the newest slot that has come, never once per missed slot; a slot that
comes while the run before it is still going counts as done by that run (the scheduler's rule).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts import BackupPolicy
from contracts.cron import CronSchedule

__all__ = ["DEFAULT_SPREAD_MAX_S", "Due", "Timing", "next_due", "offset_s", "spread_window_s"]

DEFAULT_SPREAD_FRACTION = 0.1
DEFAULT_SPREAD_MAX_S = 900.0


def spread_window_s(policy: BackupPolicy, interval_s: float) -> float:
    """The policy's `spread_s`, or a tenth of its interval, at most 15 minutes."""
    if policy.spread_s is not None:
        return policy.spread_s
    return min(interval_s * DEFAULT_SPREAD_FRACTION, DEFAULT_SPREAD_MAX_S)


def offset_s(policy: str, host: str, volume: str, window_s: float) -> float:
    """A stable offset in [0, window_s): the same for the same names, spread evenly across them."""
    if window_s <= 0:
        return 0.0
    digest = hashlib.sha256(f"{policy}\0{host}\0{volume}".encode()).digest()
    return window_s * int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Timing:
    """When one kind of job of a policy runs: its schedule, the schedule's interval, and the spread window."""

    schedule: CronSchedule
    interval_s: float
    window_s: float


@dataclass(frozen=True)
class Due:
    slot: datetime
    """The schedule's slot this run is for."""
    at: datetime
    """When it runs: the slot plus the offset."""
    missed: bool = False
    """It should have run earlier (the agent was down, or busy): it runs now, once."""


def next_due(schedule: CronSchedule, offset: float, *, done_through: datetime, now: datetime) -> Due:
    """The run after `done_through` (the slot of the last run that finished, or when the volume came under the
    policy). Due now when a slot after it has come (`at <= now`), else in the future."""
    shift = timedelta(seconds=offset)
    latest = schedule.last_at_or_before(now - shift)
    if latest > done_through:
        at = latest + shift
        return Due(latest, at, missed=_late(at, now))
    slot = schedule.next_after(max(latest, done_through))
    return Due(slot, slot + shift)


def _late(at: datetime, now: datetime) -> bool:
    return (now - at).total_seconds() > 60
