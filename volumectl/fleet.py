"""The fleet view `volumectl fleet` prints: every host's last snapshot, how old it is, what is unprotected."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from contracts import InventorySnapshot, InventoryVolume

__all__ = ["FleetRow", "age", "fleet_rows", "is_stale", "unprotected"]

STALE_HEARTBEATS = 3


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def age(ts: str, now: datetime) -> float:
    return max(0.0, (now - _parse(ts)).total_seconds())


def is_stale(s: InventorySnapshot, now: datetime) -> bool:
    """No snapshot for three heartbeats: the agent (or its host) is down or cut off."""
    return age(s.taken_at, now) > STALE_HEARTBEATS * s.heartbeat_s


def human_age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds:.0f}s"


@dataclass(frozen=True)
class FleetRow:
    host: str
    host_age: str
    stale: bool
    volume: InventoryVolume | None
    last_backup_age: float | None
    why: str = ""
    """Why `fleet --unprotected` lists it."""


def fleet_rows(snapshots: list[InventorySnapshot], now: datetime | None = None) -> list[FleetRow]:
    """One row per volume (a host without volumes gets one row of its own)."""
    now = now or datetime.now(UTC)
    rows = []
    for s in snapshots:
        host_age, stale = human_age(age(s.taken_at, now)), is_stale(s, now)
        if not s.volumes:
            rows.append(FleetRow(s.host, host_age, stale, None, None))
        for v in s.volumes:
            last = age(v.last_backup.created_at, now) if v.last_backup else None
            rows.append(FleetRow(s.host, host_age, stale, v, last))
    return rows


_AT_RISK = ("uncovered", "failing", "overdue", "suspect")


def unprotected(snapshots: list[InventorySnapshot], hours: float | None, now: datetime | None = None
                ) -> list[FleetRow]:
    """Volumes at risk across the fleet, each with why: no policy covers it, or its policy is failing or overdue
    (as its agent says, contract 2.1 and later); and, when `hours` is given, no backup in the last `hours`."""
    out = []
    for r in fleet_rows(snapshots, now):
        v = r.volume
        if v is None:
            continue
        reasons = []
        if v.protection in _AT_RISK:
            reasons.append(f"{v.protection}: {v.protection_reason or ''}".rstrip(": "))
        elif v.protection is None and hours is None:
            reasons.append("unknown: its agent predates contract 2.1 and says nothing of policies (give HOURS to "
                           "judge by the age of its last backup)")
        if hours is not None and (r.last_backup_age is None or r.last_backup_age > hours * 3600):
            reasons.append(f"no backup in the last {hours:g} h")
        if reasons:
            out.append(replace(r, why="; ".join(reasons)))
    return out
