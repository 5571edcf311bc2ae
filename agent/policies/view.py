"""The `policies` op: this agent's view of the fleet's policies, and of the volumes they cover here."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts import (
    LastVerify,
    PoliciesRequest,
    PoliciesResult,
    PolicyView,
    Protection,
    RejectedPolicy,
    VolumeCoverage,
)

from ..backup.drills import VerifyLog
from .book import PolicyBook
from .ledger import Ledger, protection, worst
from .scheduler import Scheduler

__all__ = ["PolicyStatus", "PolicyViews"]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _drill_failed(last: LastVerify | None) -> tuple[Protection, str | None] | None:
    """A volume whose last restore drill failed is `failing`, whatever its backups say: they may not restore."""
    if last is None or last.ok:
        return None
    return "failing", (f"The restore drill of backup {last.backup_id} at {last.verified_at} failed: {last.error} "
                       "(the next drill that passes clears this).")


class PolicyStatus:
    """What the inventory says of the policies (`typing.PolicyCoverage`): as of the scheduler's last look, and
    each volume's last restore drill (`verified`)."""

    def __init__(self, book: PolicyBook, ledger: Ledger, verified: VerifyLog | None = None) -> None:
        self.book = book
        self.ledger = ledger
        self.verified = verified if verified is not None else VerifyLog(None)

    def protection_of(self, volume: str, now: datetime) -> tuple[list[str], Protection, str | None]:
        names, status, reason = self.ledger.protection_of(volume, now)
        drill = _drill_failed(self.verified.get(volume))
        if drill is not None and status != "uncovered":
            status, reason = worst([(status, reason), drill])
        return names, status, reason

    def last_verify(self, volume: str) -> LastVerify | None:
        return self.verified.get(volume)

    def rejected(self) -> list[RejectedPolicy]:
        merged = {**self.book.rejected, **self.ledger.label_rejected}
        return [RejectedPolicy(name=n, reason=why) for n, why in sorted(merged.items())]


class PolicyViews:
    """The `policies` op: what the inventory says (`status`) in full, with the scheduler's next runs."""

    def __init__(self, status: PolicyStatus, scheduler: Scheduler, *, host: str) -> None:
        self.status = status
        self.book, self.ledger = status.book, status.ledger
        self.scheduler = scheduler
        self.host = host

    async def policies(self, req: PoliciesRequest) -> PoliciesResult:
        # As of the scheduler's last look (it looks again at every change): asking makes no Docker call.
        now = datetime.now(UTC)
        cover = self.ledger.coverage
        views = [PolicyView(policy=a.policy, signed_by=a.signer, signed_at=a.signed_at)
                 for _, a in sorted(self.book.accepted.items())]
        views += [PolicyView(policy=r.policy, signed_by="labels", signed_at="", source="labels")
                  for r in self.scheduler.label_rules]
        volumes: list[VolumeCoverage] = []
        for volume, rules in sorted(cover.items()):
            if req.volume is not None and volume != req.volume:
                continue
            if not rules:
                # A run of a policy removed meanwhile may still be going: said as such until it ends.
                ending = sorted(p for p, v in self.ledger.running if v == volume)
                volumes.append(VolumeCoverage(volume=volume, status="running", policy=ending[0]) if ending else
                               VolumeCoverage(volume=volume, status="uncovered",
                                              reason="No backup policy covers this volume."))
            last_verify = self.status.last_verify(volume)
            for r in rules:
                state = self.ledger.get(r.name, volume, now)
                status, reason = protection(state, r.interval_s, r.window_s, now,
                                            running=(r.name, volume) in self.ledger.running)
                if (drill := _drill_failed(last_verify)) is not None:
                    status, reason = worst([(status, reason), drill])
                nxt = self.scheduler.due(r, volume, now).at
                drills = self.scheduler.drill_job
                nxt_verify = self.scheduler.due(r, volume, now, drills).at \
                    if drills is not None and r.verify is not None else None
                volumes.append(VolumeCoverage(
                    volume=volume, status=status, policy=r.name, reason=reason, last_run=_iso(state.last_run),
                    last_success=_iso(state.last_success), last_backup_id=state.last_backup_id,
                    next_run=_iso(nxt), keep=r.policy.keep, last_verify=last_verify, next_verify=_iso(nxt_verify),
                ))
        return PoliciesResult(host=self.host, policies=views,
                              rejected=self.status.rejected(),
                              volumes=volumes)
