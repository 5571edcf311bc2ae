"""The bad-backup guard (offen/docker-volume-backup #283): a policy's keep rules delete nothing after a run whose
backup is not plausible next to the last one the guard accepted (contracts.policies `Guard`).

A volume whose mount failed, or that an accident or ransomware emptied, backs up small and complete; a policy
that keeps `last 7` would delete a good backup at every run, and after a week hold only empty ones. So the new
backup is compared with the last accepted one (of the same policy, volume, host and store), not with the one
just before it: while the volume stays small, every run is held, every old backup stays, and the volume's
protection is `suspect` with why. Retention goes on at the first run whose backup is plausible again, or once an
operator sets the policy's guard to false (or lowers its ratios): a real shrink is an operator's decision.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts import BackupRecord, Guard

__all__ = ["baseline", "held_because"]


def baseline(records: Sequence[BackupRecord], made: BackupRecord, accepted_id: str | None) -> BackupRecord | None:
    """What `made` is compared with: the backup the guard last accepted, if it is still there, else the newest
    other one (`records` newest first; None: `made` is the first)."""
    others = [r for r in records if r.backup_id != made.backup_id]
    if accepted_id is not None:
        for r in others:
            if r.backup_id == accepted_id:
                return r
    return others[0] if others else None


def held_because(guard: Guard | None, made: BackupRecord, base: BackupRecord | None) -> str | None:
    """Why retention must not run after `made` (a sentence), or None when it may (no guard, nothing to compare
    with, or plausible)."""
    if guard is None or base is None:
        return None
    problems = []
    if guard.min_size_ratio > 0 and base.size > 0 and made.size < guard.min_size_ratio * base.size:
        problems.append(f"its tar stream is {made.size} bytes, less than {guard.min_size_ratio:g} of the "
                        f"{base.size} bytes of backup {base.backup_id}")
    if (guard.min_files_ratio > 0 and made.files is not None and base.files is not None and base.files > 0
            and made.files < guard.min_files_ratio * base.files):
        problems.append(f"it holds {made.files} entries, less than {guard.min_files_ratio:g} of the {base.files} "
                        f"of backup {base.backup_id}")
    if not problems:
        return None
    return (f"Backup {made.backup_id} looks incomplete: {' and '.join(problems)}; the policy's keep rules deleted "
            "nothing. Check the volume: retention resumes with the first backup that is not that much smaller, or "
            "once the policy's guard is set to false.")
