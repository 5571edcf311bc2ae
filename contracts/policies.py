"""Backup policies: declared once for the fleet, applied by every agent whose host and volumes they select.

A policy lives in the KV bucket `<prefix>_policies` under its name, as a `PolicyEntry`: the policy's JSON text
exactly as an operator signed it. Writing there *is* the op (no agent writes the bucket, so a compromised host
cannot change the fleet's policies):

    policy.set      put a signed entry            role operator (or admin); NATS lets only them publish
    policy.remove   put a signed removal (body "")  `$KV.<prefix>_policies.<name>`
    policy.get      read one key                  role reader; any identity may read the bucket
    policy.list     read the bucket whole (volumectl.kv.read_bucket)
    policies        an agent's own view: which policies it applies, which it ignores and why, and for each
                    volume the policy that covers it, its last and next run (request op, `<prefix>.req.<host>`
                    and `<prefix>.all`)

An agent applies an entry only when it verifies: the signature (`contracts.auth.signed_bytes` over the entry's
subject `$KV.<prefix>_policies.<name>`, `signed_at` and `body`) is by a key its local policy file gives a role
that may run `policy.set` (`contracts.auth.ROLE_OPS`), on this host (the identity's `hosts`), signed no later
than `max_skew_s` ahead of its clock and not before the version it holds (no rollback). Anything else (an unsigned
write, a bare KV delete or purge, a body that is not a valid policy) is ignored, logged and reported in `policies`;
the version in force stays. Of each name, an agent applies the newest entry that verifies for its host among the
revisions the bucket keeps and every agent's copy of the entry it applies (KV `<prefix>_policy_copies`, key
`<host>.<name>`, written by that host's agent only, the entry unchanged): an agent that starts afresh does not take
the bucket's current entry on trust either.

`check_policy` says whole what is wrong with a policy (it needs cronsim, a pure-Python cron library).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import available_timezones

import msgspec

from .auth import signed_bytes
from .backups import Compression, StoreName
from .cron import CronError, Schedule, parse_schedule
from .envelope import BaseRequest
from .names import AGE_RECIPIENT_PATTERN, AgeRecipient, VolumeName
from .verify import LastVerify

__all__ = [
    "AGE_RECIPIENT_PATTERN",
    "POLICY_NAME_PATTERN",
    "AgeRecipient",
    "BackupPolicy",
    "Guard",
    "Keep",
    "PoliciesRequest",
    "PoliciesResult",
    "PolicyEntry",
    "PolicyName",
    "PolicyView",
    "Protection",
    "RejectedPolicy",
    "Selector",
    "VolumeCoverage",
    "check_policy",
    "entry_signed_bytes",
    "guard_of",
    "valid_age_recipient",
]

POLICY_NAME_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
PolicyName = Annotated[str, msgspec.Meta(pattern=POLICY_NAME_PATTERN, description="A policy's name (its KV key).")]
# A container's labels make a policy named `container:<container name>`: never a key of the bucket (`:` is not in
# POLICY_NAME_PATTERN), so it cannot be mistaken for one of the fleet's.
LABEL_POLICY_PATTERN = "^container:[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}$"
AnyPolicyName = Annotated[str, msgspec.Meta(
    pattern=f"{POLICY_NAME_PATTERN}|{LABEL_POLICY_PATTERN}",
    description="A policy's name: its key in the bucket, or `container:<name>` for a container's labels.")]
Glob = Annotated[str, msgspec.Meta(min_length=1, max_length=255, description="A shell glob (fnmatch): * ? [..]")]
LabelSelector = Annotated[str, msgspec.Meta(pattern="^[^=]+(=.*)?$", max_length=512,
                                             description="`key` (the label is set) or `key=value`.")]
Count = Annotated[int, msgspec.Meta(ge=0, le=100_000)]


class Selector(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Which volumes a policy covers: all the given conditions hold (an absent one holds for all)."""

    hosts: list[Glob] | None = None
    """The host id matches one of these globs."""
    volumes: list[Glob] | None = None
    """The volume name matches one of these globs."""
    labels: list[LabelSelector] | None = None
    """The volume carries every one of these labels (`k`: set to anything; `k=v`: set to v)."""


class Keep(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Which of a volume's backups a policy keeps (restic/borg semantics, `contracts.retention`): the newest
    `last`, and the newest of each of the last N hours, days, ISO weeks, months and years that have one. A backup
    kept by any rule stays; the newest always stays."""

    last: Count | None = None
    hourly: Count | None = None
    daily: Count | None = None
    weekly: Count | None = None
    monthly: Count | None = None
    yearly: Count | None = None


Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]


class Guard(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Nothing is pruned on a bad backup: a run's keep rules delete nothing unless its new backup is plausible next
    to the last one the guard accepted (of the same policy, volume, host and store). Until one is, the volume's
    protection is `suspect` and says why; operators are told once. A ratio of 0 turns its check off."""

    min_size_ratio: Ratio = 0.5
    """The new backup's tar stream (`size`) must be at least this part of the accepted one's."""
    min_files_ratio: Ratio = 0.5
    """Its entries (`files`) must be at least this part of the accepted one's (when both records count them)."""


class BackupPolicy(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Back up the selected volumes on a schedule, keep them by age, optionally encrypted."""

    name: AnyPolicyName
    schedule: Schedule
    """A cron expression (5 fields, or 6 with seconds first) or @hourly, @daily, @weekly, @monthly, @yearly."""
    keep: Keep
    selector: Selector = msgspec.field(default_factory=Selector)
    timezone: str = "UTC"
    """The IANA zone the schedule and the keep rules' hours, days, weeks... are read in."""
    spread_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Each (host, volume) runs at a stable offset within this window after the slot, so a fleet does not start
    together. Default: a tenth of the schedule's interval, at most 900 s. Must be shorter than the interval."""
    store: StoreName = "local"
    compression: Compression = "zstd"
    encrypt_to: list[Annotated[str, msgspec.Meta(max_length=100)]] = []
    """Encrypt every backup to these age X25519 recipients (`age1...`, checked by `check_policy` with the others);
    restoring needs one of their identities on that host."""
    stop_containers: bool = False
    guard: Guard | bool = True
    """The bad-backup guard (`Guard`): true (the default) for its default ratios, false to prune whatever a run
    made, or the ratios."""
    verify: Schedule | None = None
    """Restore drills (contracts.verify) of each covered volume's newest backup on this schedule (a cron
    expression, read in `timezone`, spread as backups are); null: none."""


def guard_of(policy: BackupPolicy) -> Guard | None:
    """The guard a policy applies (None: off)."""
    if policy.guard is True:
        return Guard()
    if policy.guard is False:
        return None
    return policy.guard


class PolicyEntry(msgspec.Struct, forbid_unknown_fields=True):
    """The value under `<name>` in the policies bucket: a policy (or its removal) as an operator signed it."""

    name: PolicyName
    body: str
    """The `BackupPolicy` as JSON text, exactly as signed; empty: the policy is removed."""
    key: str
    """The signer's public nkey (`U...`)."""
    signed_at: int
    """Unix time in nanoseconds."""
    sig: str
    """base64url (no padding) Ed25519 signature of `contracts.auth.signed_bytes(subject, str(signed_at), None,
    body)`, where subject is `Subjects.policy_subject(name)`."""


Protection = Literal["ok", "pending", "running", "suspect", "failing", "overdue", "uncovered"]
"""ok: the last scheduled run succeeded and the next is due; pending: covered, not run yet; running: a run is
under way; suspect: the newest backup is much smaller than the one before (the guard), so retention is held;
failing: the last run failed, or the last restore drill did; overdue: the last success is older than twice the
interval (or none for that long); uncovered: no policy covers the volume."""


class PolicyView(msgspec.Struct, forbid_unknown_fields=True):
    """A policy an agent applies, and who signed it."""

    policy: BackupPolicy
    signed_by: str
    """The signer's identity name in this agent's policy file; `labels` for a container-label policy."""
    signed_at: str
    source: Literal["bus", "labels"] = "bus"


class RejectedPolicy(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    reason: str
    """A sentence: why the agent ignores it (and keeps the version it had, if any)."""


class VolumeCoverage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One volume under one policy (or under none: `policy` null, status `uncovered`)."""

    volume: str
    status: Protection
    policy: str | None = None
    reason: str | None = None
    """Why it is failing, overdue or uncovered, as a sentence."""
    last_run: str | None = None
    last_success: str | None = None
    last_backup_id: str | None = None
    next_run: str | None = None
    keep: Keep | None = None
    last_verify: LastVerify | None = None
    """The volume's last restore drill here (any policy's, or `verify`)."""
    next_verify: str | None = None
    """When the policy's next restore drill of the volume runs (its `verify` schedule)."""


class PoliciesRequest(BaseRequest):
    """This agent's view of the policies: what it applies and ignores, and the volumes they cover."""

    volume: VolumeName | None = None
    """Only this volume's coverage."""


class PoliciesResult(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    policies: list[PolicyView]
    rejected: list[RejectedPolicy]
    volumes: list[VolumeCoverage]


def entry_signed_bytes(entry: PolicyEntry, subject: str) -> bytes:
    """What the signer of `entry` signed; `subject` is `Subjects.policy_subject(entry.name)`."""
    return signed_bytes(subject, str(entry.signed_at), None, entry.body.encode())


_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _bech32_polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def valid_age_recipient(text: str) -> bool:
    """An `age1...` X25519 recipient whose bech32 checksum holds (a typo is caught before any backup)."""
    if not re.match(AGE_RECIPIENT_PATTERN, text):
        return False
    hrp, data = "age", [_BECH32.index(c) for c in text[4:]]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    return _bech32_polymod(expanded + data) == 1


_ZONES: set[str] | None = None


def check_policy(policy: BackupPolicy) -> list[str]:
    """Everything wrong with a (decoded) policy, one sentence each; empty when it may be applied.

    What msgspec's types check (names, patterns, the store, compression) is checked when decoding; this checks
    what they cannot: the schedule, the zone, the spread, the keep rules and each recipient's checksum."""
    global _ZONES
    problems = []
    interval = None
    try:
        interval = parse_schedule(policy.schedule).interval_s()
    except CronError as exc:
        problems.append(f"The schedule {policy.schedule!r} is not a cron expression: {exc}.")
    if _ZONES is None:
        _ZONES = available_timezones() | {"UTC"}
    if policy.timezone not in _ZONES:
        problems.append(f"The time zone {policy.timezone!r} is not an IANA zone name (e.g. UTC, Europe/Berlin).")
    if interval is not None and policy.spread_s is not None and policy.spread_s >= interval:
        problems.append(f"spread_s {policy.spread_s:g} must be shorter than the schedule's interval "
                        f"({interval:g} s).")
    k = policy.keep
    if not any((k.last, k.hourly, k.daily, k.weekly, k.monthly, k.yearly)):
        problems.append("The keep rules keep nothing (all zero or absent): set at least one of last, hourly, "
                        "daily, weekly, monthly, yearly.")
    problems += [f"{r!r} is not an age recipient (`age1` and 58 bech32 characters whose checksum holds)."
                 for r in policy.encrypt_to if not valid_age_recipient(r)]
    if len(set(policy.encrypt_to)) != len(policy.encrypt_to):
        problems.append("encrypt_to names a recipient twice.")
    if policy.verify is not None:
        try:
            parse_schedule(policy.verify).interval_s()
        except CronError as exc:
            problems.append(f"The verify schedule {policy.verify!r} is not a cron expression: {exc}.")
    guard = guard_of(policy)
    if guard is not None and guard.min_size_ratio == 0 and guard.min_files_ratio == 0:
        problems.append("The guard's ratios are both 0, so it checks nothing: set guard to false to turn it off.")
    return problems
