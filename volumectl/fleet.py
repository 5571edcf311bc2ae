"""The fleet view `volumectl fleet` prints: every host's last snapshot, how old it is, what is unprotected."""

from __future__ import annotations

from dataclasses import dataclass
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


def unprotected(snapshots: list[InventorySnapshot], hours: float, now: datetime | None = None) -> list[FleetRow]:
    """Volumes with no backup in the last `hours`, across the fleet."""
    return [r for r in fleet_rows(snapshots, now)
            if r.volume is not None and (r.last_backup_age is None or r.last_backup_age > hours * 3600)]
