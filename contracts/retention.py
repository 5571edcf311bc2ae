"""Retention: which backups a policy's `Keep` rules keep, and why (restic `forget --keep-*`, borg `prune`).

Backups are ordered newest first by (created_at, backup_id): of two made at the same instant, the one with the
greater id counts as the newer. Then, independently for each rule:

    rule      bucket of a backup (local time in `zone`)   reason it gives
    last      -                                          `last 2/3`                      2nd newest of last=3
    hourly    `%Y-%m-%d %H`                              `hourly 2026-10-25 02 (1/24)`
    daily     `%Y-%m-%d`                                 `daily 2026-03-28 (2/7)`
    weekly    ISO week `%G-W%V`                          `weekly 2026-W53 (1/4)`
    monthly   `%Y-%m`                                    `monthly 2026-02 (3/12)`
    yearly    `%Y`                                       `yearly 2026 (1/2)`
    (always)  -                                          `newest`                        the newest backup

`last N` keeps the N newest. A calendar rule with N walks the backups newest first and keeps one whenever its
bucket differs from the bucket of the last backup that rule kept, until it has kept N: the newest backup of each
of the last N buckets that have one (an hour, day... without a backup does not count). `(k/N)` says it is the
k-th the rule kept. None and 0 keep nothing. A backup kept by any rule stays; its reasons list every rule that
keeps it, in the order of the table. The newest backup always stays, with `newest` last among its reasons.

Buckets are read on the zone's local calendar, as restic does: a backup at 23:30 UTC falls on the next day in
Europe/Berlin. When clocks go back, the repeated local hour is ONE hourly bucket (02:30 CEST and 02:30 CET on
2026-10-25 are both `2026-10-25 02`), so hourly keeps only the later of the two; when clocks go forward, the
skipped hour simply has no backups.

Unlike restic 0.17+, a rule that finds fewer than N buckets does not also keep the oldest backup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from .backups import BackupRecord
from .policies import Keep

__all__ = ["Kept", "retain", "to_forget"]


@dataclass(frozen=True)
class Kept:
    """A backup and why it stays (the reasons' format: this module's docstring)."""

    record: BackupRecord
    reasons: tuple[str, ...]
    """Empty: no rule keeps it; the next run forgets it."""


def _hour(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}"


def _day(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}"


def _week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _month(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def _year(t: datetime) -> str:
    return f"{t.year:04d}"


def _instant(record: BackupRecord) -> datetime:
    t = datetime.fromisoformat(record.created_at)
    # created_at is UTC by contract; a stamp without an offset is read as UTC rather than as the host's zone.
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def retain(records: Iterable[BackupRecord], keep: Keep, zone: str = "UTC") -> list[Kept]:
    """Newest first. The caller passes only the backups the rules apply to (one volume, one host, one store, one
    policy)."""
    tz: tzinfo = UTC if zone == "UTC" else ZoneInfo(zone)
    stamped = sorted(((_instant(r), r) for r in records), key=lambda p: (p[0], p[1].backup_id), reverse=True)
    reasons: list[list[str]] = [[] for _ in stamped]
    last = keep.last or 0
    for i in range(min(last, len(stamped))):
        reasons[i].append(f"last {i + 1}/{last}")
    local = [t.astimezone(tz) for t, _ in stamped]
    rules: tuple[tuple[str, int | None, Callable[[datetime], str]], ...] = (
        ("hourly", keep.hourly, _hour),
        ("daily", keep.daily, _day),
        ("weekly", keep.weekly, _week),
        ("monthly", keep.monthly, _month),
        ("yearly", keep.yearly, _year),
    )
    for name, count, bucket_of in rules:
        n, kept, previous = count or 0, 0, None
        for i, t in enumerate(local):
            if kept >= n:
                break
            bucket = bucket_of(t)
            if bucket != previous:
                kept, previous = kept + 1, bucket
                reasons[i].append(f"{name} {bucket} ({kept}/{n})")
    if reasons:
        reasons[0].append("newest")
    return [Kept(r, tuple(why)) for (_, r), why in zip(stamped, reasons, strict=True)]


def to_forget(kept: Sequence[Kept]) -> list[BackupRecord]:
    """The ones no rule keeps (never the newest)."""
    return [k.record for k in kept if not k.reasons]
