"""The `policies` op: this agent's view of the fleet's policies, and of the volumes they cover here."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts import PoliciesRequest, PoliciesResult, PolicyView, Protection, RejectedPolicy, VolumeCoverage

from .book import PolicyBook
from .ledger import Ledger, protection
from .scheduler import Scheduler

__all__ = ["PolicyStatus", "PolicyViews"]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


class PolicyStatus:
    """What the inventory says of the policies (`typing.PolicyCoverage`): as of the scheduler's last look."""

    def __init__(self, book: PolicyBook, ledger: Ledger) -> None:
        self.book = book
        self.ledger = ledger

    def protection_of(self, volume: str, now: datetime) -> tuple[list[str], Protection, str | None]:
        return self.ledger.protection_of(volume, now)

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
            for r in rules:
                state = self.ledger.get(r.name, volume, now)
                status, reason = protection(state, r.interval_s, r.window_s, now,
                                            running=(r.name, volume) in self.ledger.running)
                nxt = self.scheduler.due(r, volume, now).at
                volumes.append(VolumeCoverage(
                    volume=volume, status=status, policy=r.name, reason=reason, last_run=_iso(state.last_run),
                    last_success=_iso(state.last_success), last_backup_id=state.last_backup_id,
                    next_run=_iso(nxt), keep=r.policy.keep,
                ))
        return PoliciesResult(host=self.host, policies=views,
                              rejected=self.status.rejected(),
                              volumes=volumes)
