"""Schedules: cron expressions (through cronsim), read in a time zone.

    5 fields     minute hour day-of-month month day-of-week          `30 2 * * *`
    6 fields     second minute hour day-of-month month day-of-week   `*/10 * * * * *`
    aliases      @hourly @daily (@midnight) @weekly @monthly @yearly (@annually)

A slot that a daylight-saving change skips runs at the first moment after it (cronsim's rule, as cron's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import msgspec
from cronsim import CronSim, CronSimError

__all__ = ["ALIASES", "CronError", "CronSchedule", "Schedule", "parse_schedule"]

Schedule = Annotated[str, msgspec.Meta(min_length=1, max_length=200,
                                        description="A cron expression (5 fields, or 6 with seconds first) or "
                                                    "@hourly, @daily, @weekly, @monthly, @yearly.")]

ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# Slots looked at to find the interval: a week of a weekday schedule has its longest gap (Friday to Monday).
_INTERVAL_SLOTS = 16


class CronError(ValueError):
    """The expression is not a schedule; the message says why."""


@dataclass(frozen=True)
class CronSchedule:
    expr: str
    """The expression with aliases expanded."""
    zone: str = "UTC"

    def slots(self, after: datetime, *, reverse: bool = False) -> Iterator[datetime]:
        """Slot times after `after` (before it with `reverse`), in UTC.

        cronsim works in the schedule's zone and gives local times; they are turned into UTC at once, because
        arithmetic and comparisons of local times ignore `fold`: in the hour that repeats when the clocks go back,
        02:00 CET would otherwise compare (and add) as 02:00 CEST, an hour earlier."""
        for t in CronSim(self.expr, after.astimezone(ZoneInfo(self.zone)), reverse=reverse):
            yield t.astimezone(UTC)

    def next_after(self, t: datetime) -> datetime:
        """The first slot strictly after `t`."""
        return next(s for s in self.slots(t) if s > t)

    def last_at_or_before(self, t: datetime) -> datetime:
        """The newest slot at or before `t`."""
        # cronsim's reverse iteration gives slots strictly before the time it starts from.
        return next(s for s in self.slots(t + timedelta(microseconds=1), reverse=True) if s <= t)

    def interval_s(self, around: datetime | None = None) -> float:
        """The longest gap between consecutive slots over the next few (what "twice its interval" is measured
        in, and the default spread's base)."""
        start = around or datetime(2026, 1, 5, tzinfo=ZoneInfo("UTC"))
        it = self.slots(start)
        prev = next(it)
        longest = timedelta(0)
        for _ in range(_INTERVAL_SLOTS):
            t = next(it)
            longest, prev = max(longest, t - prev), t
        return longest.total_seconds()


def parse_schedule(expr: str, zone: str = "UTC") -> CronSchedule:
    """The schedule of `expr`, or `CronError` saying what is wrong with it."""
    text = " ".join(expr.split())
    text = ALIASES.get(text.lower(), text)
    if text.startswith("@"):
        raise CronError(f"unknown alias; use one of {', '.join(sorted(ALIASES))}")
    if len(text.split()) not in (5, 6):
        raise CronError("a cron expression has 5 fields (or 6 with seconds first)")
    try:
        CronSim(text, datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC")))
    except (CronSimError, ValueError) as exc:
        raise CronError(str(exc).rstrip(".") or "not a cron expression") from None
    sched = CronSchedule(text, zone)
    try:
        sched.interval_s()
    except (StopIteration, CronSimError, ValueError):
        raise CronError("it never fires (no such date)") from None
    return sched
