"""Which policies cover which of this host's volumes: the bus's policies by their selectors, and the policies
containers declare with labels (`volume-agent.backup.schedule=@daily` and the keep labels).

Pure functions of their inputs: evaluated anew whenever the policies, the volumes or the containers change.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from contracts import BackupPolicy, Keep, Selector, check_policy
from contracts.cron import CronError, CronSchedule, parse_schedule
from contracts.labels import (
    ENCRYPT_TO,
    ON_STOP_COMPRESSION,
    ON_STOP_KEEP,
    ON_STOP_STORE,
    ON_STOP_VOLUMES,
    SCHEDULE,
    SCHEDULE_KEEP,
    TIMEZONE,
)

from ..volumes import named_volumes
from .book import Accepted
from .timing import Timing, spread_window_s

__all__ = ["Rule", "covered", "label_rules", "matches", "rules_of"]


@dataclass(frozen=True)
class Rule:
    """A policy ready to schedule."""

    policy: BackupPolicy
    schedule: CronSchedule
    interval_s: float
    window_s: float
    signer: str
    signed_at: str
    source: Literal["bus", "labels"] = "bus"
    verify: Timing | None = None
    """When its restore drills run (the policy's `verify`); None: it asks for none."""

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def backups(self) -> Timing:
        return Timing(self.schedule, self.interval_s, self.window_s)


def _rule(policy: BackupPolicy, signer: str, signed_at: str, source: Literal["bus", "labels"]) -> Rule:
    schedule = parse_schedule(policy.schedule, policy.timezone)
    interval = schedule.interval_s()
    verify = None
    if policy.verify is not None:
        drills = parse_schedule(policy.verify, policy.timezone)
        every = drills.interval_s()
        # Spread as backups are; a spread meant for a longer backup interval is cut to half the drills' own.
        verify = Timing(drills, every, min(spread_window_s(policy, every), every / 2))
    return Rule(policy, schedule, interval, spread_window_s(policy, interval), signer, signed_at, source, verify)


def rules_of(accepted: Mapping[str, Accepted]) -> list[Rule]:
    """The bus's accepted policies (already checked whole by PolicyTrust)."""
    return [_rule(a.policy, a.signer, a.signed_at, "bus") for _, a in sorted(accepted.items())]


def matches(selector: Selector, host: str, volume: str, labels: Mapping[str, str]) -> bool:
    """Every condition the selector gives holds: a host glob, a volume glob, and every label."""
    if selector.hosts is not None and not any(fnmatch.fnmatchcase(host, g) for g in selector.hosts):
        return False
    if selector.volumes is not None and not any(fnmatch.fnmatchcase(volume, g) for g in selector.volumes):
        return False
    for want in selector.labels or ():
        key, eq, value = want.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def covered(rules: Iterable[Rule], host: str, volumes: Iterable[Mapping[str, Any]]) -> dict[str, list[Rule]]:
    """Each volume (Engine volume summaries) and the rules that cover it here, in the rules' order."""
    rules = list(rules)
    out: dict[str, list[Rule]] = {}
    for v in volumes:
        name, labels = v["Name"], v.get("Labels") or {}
        out[name] = [r for r in rules if matches(r.policy.selector, host, name, labels)]
    return out


def label_rules(containers: Iterable[Mapping[str, Any]]) -> tuple[list[Rule], dict[str, str]]:
    """The policies containers declare with labels (Engine container summaries), and the ones that are invalid
    (policy name -> why): `container:<name>` covers the container's named volumes on its own schedule."""
    rules, rejected = [], {}
    for c in containers:
        labels: dict[str, str] = c.get("Labels") or {}
        if SCHEDULE not in labels:
            continue
        cname = (c.get("Names") or [c.get("Id", "")[:12]])[0].lstrip("/")
        rule = _label_rule(cname, tuple(sorted(labels.items())), tuple(named_volumes(c.get("Mounts"))))
        if isinstance(rule, str):
            rejected[f"container:{cname}"] = rule
        else:
            rules.append(rule)
    return rules, rejected


@functools.lru_cache(maxsize=1024)
def _label_rule(cname: str, labels: tuple[tuple[str, str], ...], mounted: tuple[str, ...]) -> Rule | str:
    """The rule of one container's labels, or why they are not one; remembered, because the scheduler reads the
    containers at every look and their labels do not change."""
    try:
        policy = _label_policy(f"container:{cname}", dict(labels), list(mounted))
        if problems := check_policy(policy):
            raise ValueError(" ".join(problems))
        return _rule(policy, "labels", "", "labels")
    except (ValueError, CronError, msgspec.ValidationError) as exc:
        return f"The backup labels of container {cname!r} are not a valid schedule: {exc}"


def _label_policy(name: str, labels: Mapping[str, str], mounted: list[str]) -> BackupPolicy:
    volumes = mounted
    if (subset := labels.get(ON_STOP_VOLUMES)) is not None:
        volumes = [v for v in mounted if v in {s.strip() for s in subset.split(",")}]
    if not volumes:
        raise ValueError(f"it mounts no named volume{' named in ' + ON_STOP_VOLUMES if subset else ''}")
    keep: dict[str, int] = {}
    if (last := labels.get(ON_STOP_KEEP)) is not None:
        keep["last"] = _count(ON_STOP_KEEP, last)
    for rule, label in SCHEDULE_KEEP.items():
        if (value := labels.get(label)) is not None:
            keep[rule] = _count(label, value)
    if not any(keep.values()):
        raise ValueError(f"it keeps nothing: set {SCHEDULE_KEEP['daily']}=7 or another of "
                         f"{', '.join(SCHEDULE_KEEP.values())} (or {ON_STOP_KEEP})")
    raw: dict[str, Any] = {
        "name": "labels", "schedule": labels[SCHEDULE], "keep": keep,
        "selector": {"volumes": volumes},
        "timezone": labels.get(TIMEZONE, "UTC"),
        "compression": labels.get(ON_STOP_COMPRESSION, "zstd"), "store": labels.get(ON_STOP_STORE, "local"),
        "encrypt_to": [r.strip() for r in labels.get(ENCRYPT_TO, "").split(",") if r.strip()],
    }
    policy = msgspec.convert(raw, BackupPolicy)
    # The volumes' exact names serve as globs: Docker's names hold no glob characters ([a-zA-Z0-9_.-]).
    return msgspec.structs.replace(policy, name=name, keep=msgspec.convert(keep, Keep))


def _count(label: str, value: str) -> int:
    if not value.strip().isdigit():
        raise ValueError(f"label {label}={value!r} is not a whole number")
    return int(value)
