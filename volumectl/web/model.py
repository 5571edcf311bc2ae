"""What the fleet page shows, aggregated on the server: each host's snapshot reduced to the figures the page needs,
and the fleet's health summed from them, so a browser receives what it shows and never the whole inventory.

A host is as healthy as its worst volume (`RANK`); stale when its last snapshot is older than three heartbeats
(`volumectl.fleet.is_stale`). Everything here is pure: `Fleet` is fed snapshots and catalog figures by the bus
follower (`volumectl.web.follower`) and asked for views by the HTTP handlers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts import InventorySnapshot, InventoryVolume

from ..fleet import age, is_stale
from ..redact import redact

__all__ = ["RANK", "Fleet", "HostFigures", "status_of"]

RANK = {"failing": 7, "suspect": 6, "overdue": 5, "uncovered": 4, "unknown": 3, "running": 2, "pending": 1, "ok": 0,
        "empty": 0}
"""How bad each protection status is: a host shows its worst volume's. `suspect` (the bad-backup guard holds
retention: the newest backup may have lost data) is worse than late, as only a person can clear it."""
AT_RISK = ("failing", "suspect", "overdue", "uncovered")
LISTED = ("failing", "suspect", "overdue")
"""The statuses whose volumes the first screen lists with why."""
ATTENTION_LIMIT = 100
"""Failing, suspect and overdue volumes (and failed drills) listed on the first screen (counts say how many)."""


def status_of(v: InventoryVolume) -> str:
    """A volume's protection; `unknown` from an agent before contract 2.1 (or with a status this page predates)."""
    return v.protection if v.protection in RANK else "unknown"


def drill_of(v: InventoryVolume, now: datetime) -> dict[str, Any] | None:
    """The volume's last restore drill (its `last_verify`) as the page shows it; None: never drilled here."""
    d = v.last_verify
    if d is None:
        return None
    t = _ts(d.verified_at)
    return {"backup_id": d.backup_id, "verified_at": d.verified_at, "ok": d.ok, "policy": d.policy,
            "error": redact(d.error) if d.error else None,
            "age_s": None if t is None else max(0.0, now.timestamp() - t)}


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@dataclass
class HostFigures:
    """One host reduced to what the fleet screen needs; made again whenever its snapshot changes."""

    host: str
    snapshot: InventorySnapshot
    counts: dict[str, int] = field(default_factory=dict)
    worst: str = "empty"
    size: int = 0
    risks: list[tuple[str, str, str]] = field(default_factory=list)
    """(volume, status, why) of its failing, suspect and overdue volumes, worst first."""
    newest_backup: float | None = None
    drills: dict[str, int] = field(default_factory=dict)
    """Its volumes' last restore drills: how many `passed`, `failed`, `never` drilled."""
    drill_failures: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(volume, backup id, when, why) of its volumes whose last drill failed."""
    newest_drill: float | None = None

    @classmethod
    def of(cls, s: InventorySnapshot) -> HostFigures:
        f = cls(s.host, s)
        worst = -1
        for v in s.volumes:
            st = status_of(v)
            f.counts[st] = f.counts.get(st, 0) + 1
            if RANK[st] > worst:
                worst, f.worst = RANK[st], st
            f.size += v.size or 0
            if st in LISTED:
                f.risks.append((v.name, st, redact(v.protection_reason or "")))
            d = v.last_verify
            drill = "never" if d is None else ("passed" if d.ok else "failed")
            f.drills[drill] = f.drills.get(drill, 0) + 1
            if d is not None:
                if not d.ok:
                    f.drill_failures.append((v.name, d.backup_id, d.verified_at,
                                             redact(d.error or "the drill failed (no reason given)")))
                t = _ts(d.verified_at)
                if t is not None and (f.newest_drill is None or t > f.newest_drill):
                    f.newest_drill = t
            if v.last_backup is not None:
                t = _ts(v.last_backup.created_at)
                if t is not None and (f.newest_backup is None or t > f.newest_backup):
                    f.newest_backup = t
        f.risks.sort(key=lambda r: (-RANK[r[1]], r[0]))
        f.drill_failures.sort()
        return f

    def row(self, now: datetime) -> dict[str, Any]:
        s = self.snapshot
        return {
            "host": s.host, "status": self.worst, "stale": is_stale(s, now), "age_s": round(age(s.taken_at, now), 1),
            "insecure": [redact(x) for x in s.insecure], "volumes": len(s.volumes), "counts": self.counts,
            "size": self.size, "agent_version": s.agent_version, "engine": s.engine.version,
            "rejected": len(s.rejected_policies), "newest_backup": self.newest_backup,
            "drills": self.drills, "newest_drill": self.newest_drill,
        }


class Fleet:
    """Every host's figures, the shared store's totals, and the views the HTTP handlers serve."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostFigures] = {}
        self.stored: dict[str, tuple[int, int]] = {}
        """Per host: backups in the shared store, and their stored bytes (the catalog)."""
        self.unreadable: list[str] = []
        self.loaded_at: float | None = None

    def put(self, snapshot: InventorySnapshot) -> bool:
        """Take a host's snapshot; False when it is older than the one held (a late message)."""
        old = self.hosts.get(snapshot.host)
        if old is not None and old.snapshot.seq > snapshot.seq and old.snapshot.taken_at > snapshot.taken_at:
            return False
        self.hosts[snapshot.host] = HostFigures.of(snapshot)
        return True

    def replace(self, snapshots: Iterable[InventorySnapshot]) -> None:
        self.hosts = {s.host: HostFigures.of(s) for s in snapshots}

    def stale_hosts(self, now: datetime) -> set[str]:
        return {h for h, f in self.hosts.items() if is_stale(f.snapshot, now)}

    def summary(self, now: datetime | None = None) -> dict[str, Any]:
        """The first screen: counts, the failing, suspect and overdue volumes with why, the volumes whose last
        restore drill failed (with why), and the fleet map."""
        now = now or datetime.now(UTC)
        counts: dict[str, int] = {}
        hosts = {"total": 0, "up": 0, "stale": 0, "insecure": 0}
        volumes = size = 0
        attention: list[tuple[int, str, str, str, str]] = []
        attention_total = 0
        drills: dict[str, int] = {}
        failed: list[tuple[str, str, str, str, str]] = []
        grid = []
        for h in sorted(self.hosts):
            f = self.hosts[h]
            stale = is_stale(f.snapshot, now)
            hosts["total"] += 1
            hosts["stale" if stale else "up"] += 1
            hosts["insecure"] += bool(f.snapshot.insecure)
            volumes += len(f.snapshot.volumes)
            size += f.size
            for k, n in f.counts.items():
                counts[k] = counts.get(k, 0) + n
            attention_total += len(f.risks)
            for k, n in f.drills.items():
                drills[k] = drills.get(k, 0) + n
            if len(failed) < ATTENTION_LIMIT * 4:
                failed += [(when, h, v, b, why) for v, b, when, why in f.drill_failures[:ATTENTION_LIMIT]]
            if len(attention) < ATTENTION_LIMIT * 4:
                attention += [(-RANK[st], h, v, st, why) for v, st, why in f.risks[:ATTENTION_LIMIT]]
            grid.append([h, f.worst, stale, bool(f.snapshot.insecure)])
        attention.sort()
        failed.sort(reverse=True)  # the newest failures first
        protected = sum(counts.get(k, 0) for k in ("ok", "pending", "running"))
        stored = [sum(n for n, _ in self.stored.values()), sum(b for _, b in self.stored.values())]
        return {
            "at": now.isoformat(), "hosts": hosts, "volumes": volumes, "size": size, "counts": counts,
            "protected": protected, "at_risk": {k: counts.get(k, 0) for k in AT_RISK},
            "shared_store": {"backups": stored[0], "bytes": stored[1]},
            "attention": [{"host": h, "volume": v, "status": st, "why": why}
                          for _, h, v, st, why in attention[:ATTENTION_LIMIT]],
            "attention_total": attention_total,
            "drills": {k: drills.get(k, 0) for k in ("passed", "failed", "never")},
            "drill_failures": [{"host": h, "volume": v, "backup_id": b, "at": when, "why": why}
                               for when, h, v, b, why in failed[:ATTENTION_LIMIT]],
            "grid": grid, "unreadable": list(self.unreadable),
        }

    def host_rows(self, *, offset: int = 0, limit: int = 50, query: str = "", status: str = "",
                  now: datetime | None = None) -> dict[str, Any]:
        """A page of the host table, worst first; `query` filters by name, `status` by worst status or `stale`."""
        now = now or datetime.now(UTC)
        q = query.lower()
        picked = []
        for h, f in self.hosts.items():
            if q and q not in h.lower():
                continue
            if status == "stale" and not is_stale(f.snapshot, now):
                continue
            if status == "insecure" and not f.snapshot.insecure:
                continue
            if status == "drill-failed" and not f.drill_failures:
                continue
            if status and status not in ("stale", "insecure", "drill-failed") and f.worst != status:
                continue
            picked.append(f)
        picked.sort(key=lambda f: (-RANK[f.worst], f.host))
        return {"total": len(picked), "offset": offset,
                "hosts": [f.row(now) for f in picked[offset:offset + limit]]}

    def host(self, host: str, *, offset: int = 0, limit: int = 100, query: str = "",
             now: datetime | None = None) -> dict[str, Any] | None:
        """One host and a page of its volumes, worst first."""
        f = self.hosts.get(host)
        if f is None:
            return None
        now = now or datetime.now(UTC)
        s = f.snapshot
        q = query.lower()
        vols = [v for v in s.volumes if not q or q in v.name.lower()]
        vols.sort(key=lambda v: (-RANK[status_of(v)], v.name))
        return {
            **f.row(now), "taken_at": s.taken_at, "heartbeat_s": s.heartbeat_s, "sizes_at": s.sizes_at,
            "plugins": s.plugins, "stored": self.stored.get(host, (0, 0)),
            "rejected_policies": [{"name": r.name, "reason": redact(r.reason)} for r in s.rejected_policies],
            "total": len(vols), "offset": offset,
            "volume_rows": [volume_row(v, now) for v in vols[offset:offset + limit]],
        }

    def volume(self, host: str, name: str) -> InventoryVolume | None:
        f = self.hosts.get(host)
        if f is None:
            return None
        return next((v for v in f.snapshot.volumes if v.name == name), None)

    def policy_hosts(self) -> dict[str, dict[str, Any]]:
        """Per policy name, from the inventory: hosts whose volumes it covers (how many), hosts that ignore it
        (why)."""
        out: dict[str, dict[str, Any]] = {}
        for h in sorted(self.hosts):
            s = self.hosts[h].snapshot
            covered: dict[str, int] = {}
            for v in s.volumes:
                for p in v.policies:
                    covered[p] = covered.get(p, 0) + 1
            for p, n in covered.items():
                out.setdefault(p, {"applying": [], "ignoring": []})["applying"].append({"host": h, "volumes": n})
            for r in s.rejected_policies:
                out.setdefault(r.name, {"applying": [], "ignoring": []})["ignoring"].append(
                    {"host": h, "why": redact(r.reason)})
        return out


def volume_row(v: InventoryVolume, now: datetime) -> dict[str, Any]:
    last = v.last_backup
    t = _ts(last.created_at) if last else None
    return {
        "name": v.name, "driver": v.driver, "size": v.size, "status": status_of(v),
        "why": redact(v.protection_reason or ""), "policies": v.policies,
        "users": [{"container": u.container, "state": u.state} for u in v.used_by],
        "labels": v.labels, "created_at": v.created_at,
        "last_backup": None if last is None else {
            "backup_id": last.backup_id, "created_at": last.created_at, "store": last.store, "size": last.size,
            "trigger": last.trigger, "age_s": None if t is None else max(0.0, now.timestamp() - t)},
        "last_verify": drill_of(v, now),
    }
