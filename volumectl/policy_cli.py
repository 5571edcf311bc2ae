"""`volumectl policy set|ls|show|rm|explain` and `volumectl backups VOLUME --explain-keep` (the parser: args.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from contracts import BackupPolicy, BackupRecord, BackupsResult, LastVerify, PoliciesResult, result_as
from contracts.policies import guard_of
from contracts.retention import retain

from . import render
from .client import AgentClient, NoAgent
from .output import fail
from .policies import PolicyRefused, policy_of, preview, read_policies, remove_policy, set_policy, valid_policy
from .signing import Signer

__all__ = ["explain_keep", "run"]

_KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
SIGNERS_TIMEOUT_S = 3.0
"""How long `policy ls` waits for the agent's names of the signers (their keys are shown without it)."""


def _policy_from(a: argparse.Namespace) -> BackupPolicy:
    raw: dict[str, Any] = {}
    if a.file:
        try:
            raw = msgspec.json.decode(Path(a.file).read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            raise PolicyRefused(f"Cannot read the policy file {a.file}: {exc}.") from None
        if not isinstance(raw, dict):
            raise PolicyRefused(f"The policy file {a.file} does not hold a JSON object.")
    raw["name"] = a.name
    keep = {rule: getattr(a, f"keep_{rule}") for rule in _KEEP if getattr(a, f"keep_{rule}") is not None}
    if keep:
        raw["keep"] = keep

    selector = dict(raw.get("selector") or {})
    for field, value in (("hosts", a.hosts), ("volumes", a.volumes), ("labels", a.label)):
        if value:
            selector[field] = value
    raw["selector"] = selector
    for field, value in (("schedule", a.schedule), ("timezone", a.timezone), ("spread_s", a.spread),
                         ("store", a.store), ("compression", a.compression), ("encrypt_to", a.encrypt_to),
                         ("stop_containers", a.stop_containers)):
        if value is not None:
            raw[field] = value
    if a.verify is not None:
        if a.verify.lower() == "none":
            raw.pop("verify", None)
        else:
            raw["verify"] = a.verify
    if a.guard is False:
        raw["guard"] = False
    elif a.guard_ratios is not None:
        raw["guard"] = _guard_ratios(a.guard_ratios)
    if "keep" not in raw:  # said as what to add, not as msgspec's missing field
        raise PolicyRefused("The policy has no keep rules: give at least one of "
                            + ", ".join(f"--keep-{r} N" for r in _KEEP) + " (N >= 1).")
    if "schedule" not in raw:
        raise PolicyRefused("The policy has no schedule: give --schedule, a cron expression (e.g. '0 3 * * *') "
                            "or @hourly, @daily, @weekly, @monthly, @yearly.")
    return valid_policy(raw)


def _guard_ratios(text: str) -> dict[str, float]:
    parts = text.split(",")
    try:
        ratios = [float(x) for x in parts]
    except ValueError:
        ratios = []
    if len(ratios) not in (1, 2):
        raise PolicyRefused(f"--guard {text!r} is not SIZE[,FILES]: one or two ratios between 0 and 1, e.g. 0.5,0.5.")
    return {"min_size_ratio": ratios[0], "min_files_ratio": ratios[-1]}


async def run(a: argparse.Namespace, client: AgentClient) -> int:
    js = client.nc.jetstream()
    try:
        match a.policy_cmd:
            case "set":
                return await _set(a, client)
            case "ls":
                return await _ls(a, client)
            case "show":
                entry = (await read_policies(js, client.subjects)).get(a.name)
                policy = policy_of(entry) if entry else None
                if entry is None or policy is None:
                    return fail(a, "not_found", f"There is no policy {a.name!r} in the bucket.")
                names = await _signer_names(a, client)
                shown = {"policy": policy, "signed_by": entry.key, "signer": names.get(entry.key),
                         "signed_at_ns": entry.signed_at, "guard": guard_of(policy), "verify": policy.verify}
                encoded = msgspec.json.encode(shown)
                print((encoded if a.json else msgspec.json.format(encoded, indent=2)).decode())
                return 0
            case "rm":
                entry = (await read_policies(js, client.subjects)).get(a.name)
                if (entry is None or not entry.body) and not a.force:
                    return fail(a, "not_found", f"The bucket has no policy {a.name!r}: nothing removed. If agents "
                                "still apply one deleted without a signed removal, write one with --force.")
                written = await remove_policy(js, client.subjects, _signer(client), a.name)
                if a.json:
                    print(msgspec.json.encode({"removed": a.name, "signed_by": written.key}).decode())
                else:
                    print(f"removed {a.name} (agents stop scheduling it as they read the bucket)")
                return 0
            case "explain":
                return await _explain(a, client)
    except PolicyRefused as exc:
        return fail(a, "refused", str(exc))
    return 2


async def _signer_names(a: argparse.Namespace, client: AgentClient) -> dict[str, str]:
    """Signers' names by public key, as the agent of --host knows them from its policy file (the bucket holds
    keys only); empty if it does not answer soon."""
    try:
        reply = await client.request(a.host, "policies", {}, timeout=SIGNERS_TIMEOUT_S)
        result = result_as(reply, PoliciesResult)
    except (NoAgent, ValueError):
        return {}
    entries = await read_policies(client.nc.jetstream(), client.subjects)
    names = {}
    for view in result.policies:
        e = entries.get(view.policy.name)
        if e is not None and view.source == "bus" and policy_of(e) == view.policy:
            names[e.key] = view.signed_by
    return names


async def _ls(a: argparse.Namespace, client: AgentClient) -> int:
    entries = await read_policies(client.nc.jetstream(), client.subjects)
    names = await _signer_names(a, client)
    shown = [(name, e, p) for name, e in sorted(entries.items()) if (p := policy_of(e)) is not None]
    if a.json:
        print(msgspec.json.encode([{"name": name, "policy": p, "signed_by": e.key, "signer": names.get(e.key),
                                    "signed_at_ns": e.signed_at} for name, e, p in shown]).decode())
        return 0
    rows = [[name, p.schedule + ("" if p.timezone == "UTC" else f" {p.timezone}"), _selector(p), _keep(p),
             p.store + (" encrypted" if p.encrypt_to else ""), _guard(p), p.verify or "-",
             names.get(e.key) or e.key[:12] + "..."]
            for name, e, p in shown]
    print(render.table(rows, ["NAME", "SCHEDULE", "SELECTOR", "KEEP", "STORE", "GUARD", "VERIFY", "SIGNED BY"]))
    return 0


def _signer(client: AgentClient) -> Signer:
    if client.signer is None:
        raise PolicyRefused("Setting or removing a policy needs your seed to sign it: pass --seed FILE.")
    return client.signer


async def _set(a: argparse.Namespace, client: AgentClient) -> int:
    policy = _policy_from(a)
    # What its keep rules would delete of the backups an earlier version of it made (every host's own).
    replies = await client.gather("backups", {"made_here": True}, window=a.window)
    backups = [b for r in replies if r.ok for b in result_as(r, BackupsResult).backups]
    deletes = [p for p in preview(policy, backups) if p.forgotten]
    forgets = [{"host": p.host, "volume": p.volume, "kept": p.kept,
                "forgotten": [b.backup_id for b in p.forgotten]} for p in deletes]
    for p in deletes:
        print(f"{p.host} {p.volume}: would forget {len(p.forgotten)} backup(s), keep {p.kept}: "
              + ", ".join(b.backup_id for b in p.forgotten), file=sys.stderr)
    if a.dry_run:
        if a.json:
            print(msgspec.json.encode({"valid": True, "policy": policy, "would_forget": forgets,
                                       "hosts_answered": len(replies)}).decode())
        else:
            print(f"policy {policy.name} is valid; {sum(len(p.forgotten) for p in deletes)} backup(s) would be "
                  f"forgotten at the next runs ({len(replies)} host(s) answered)")
        return 0
    if deletes and not a.yes:
        return fail(a, "refused", "Not set: its keep rules would forget the backups above at the next runs; pass "
                    "--yes to set it anyway, or --dry-run to look only.")
    entry = await set_policy(client.nc.jetstream(), client.subjects, _signer(client), policy)
    if a.json:
        print(msgspec.json.encode({"set": policy.name, "signed_by": entry.key, "would_forget": forgets}).decode())
    else:
        print(f"set {policy.name} (signed by {entry.key[:12]}...; every agent applies it when it reads the bucket)")
    return 0


async def _explain(a: argparse.Namespace, client: AgentClient) -> int:
    try:
        reply = await client.request(a.host, "policies", {"volume": a.volume})
    except NoAgent as exc:
        return fail(a, "no_agent", str(exc))
    if reply.error is not None:
        return fail(a, reply.error.code, reply.error.message, wire=True)
    result = result_as(reply, PoliciesResult)
    if a.json:
        print(msgspec.json.encode(result).decode())
        return 0
    covs = [c for c in result.volumes if c.volume == a.volume]
    if not covs:
        return fail(a, "not_found", f"Host {result.host} has no volume {a.volume!r}.")
    for c in covs:
        if c.policy is None:
            print(f"{a.volume} on {result.host}: not covered by any policy")
            continue
        keep = ", ".join(f"{k} {v}" for k, v in msgspec.structs.asdict(c.keep).items() if v) if c.keep else "-"
        print(f"{a.volume} on {result.host}: policy {c.policy}: {c.status}"
              + (f" ({c.reason})" if c.reason else "")
              + f"\n  last run {c.last_run or 'never'}, last success {c.last_success or 'never'}"
              + (f" ({c.last_backup_id})" if c.last_backup_id else "")
              + f"\n  next run {c.next_run or '-'}\n  keeps {keep}"
              + f"\n  guard {_guard_of_view(result, c.policy)}"
              + f"\n  last drill {_drill(c.last_verify)}"
              + (f"\n  next drill {c.next_verify}" if c.next_verify else ""))
    for r in result.rejected:
        print(f"ignored here: {r.name}: {r.reason}", file=sys.stderr)
    return 0


async def explain_keep(a: argparse.Namespace, client: AgentClient, backups: list[BackupRecord]) -> int:
    """Each backup of a volume, and which rule of the policy that made it keeps it."""
    policies = {n: p for n, e in (await read_policies(client.nc.jetstream(), client.subjects)).items()
                if (p := policy_of(e)) is not None}
    groups: dict[tuple[str | None, str, str], list[BackupRecord]] = {}
    for b in backups:
        groups.setdefault((b.policy, b.host, b.store), []).append(b)
    ordered = sorted(groups.items(), key=lambda g: (g[0][0] or "", g[0][1], g[0][2]))
    if a.json:
        out = []
        for (name, host, store), records in ordered:
            policy = policies.get(name) if name else None
            kept = retain(records, policy.keep, policy.timezone) if policy else []
            out.append({"policy": name, "host": host, "store": store, "keep": policy.keep if policy else None,
                        "backups": [{"backup_id": k.record.backup_id, "created_at": k.record.created_at,
                                     "kept_by": k.reasons} for k in kept] if policy else
                                   [{"backup_id": r.backup_id, "created_at": r.created_at, "kept_by": None}
                                    for r in records]})
        print(msgspec.json.encode(out).decode())
        return 0
    for (name, host, store), records in ordered:
        policy = policies.get(name) if name else None
        if policy is None:
            why = "made without a policy" if name is None else f"policy {name} is no longer set"
            print(f"# {host} {store}: {why}: kept until forgotten")
            print(render.backups_table([msgspec.to_builtins(r) for r in records]))
            continue
        print(f"# {host} {store}: policy {name}, keep {_keep(policy)}")
        print("\n".join(render.keep_table(retain(records, policy.keep, policy.timezone))))
    return 0


def _selector(p: BackupPolicy) -> str:
    s = p.selector
    parts = [f"hosts={','.join(s.hosts)}" if s.hosts else "", f"volumes={','.join(s.volumes)}" if s.volumes else "",
             f"labels={','.join(s.labels)}" if s.labels else ""]
    return " ".join(x for x in parts if x) or "all"


def _guard(p: BackupPolicy) -> str:
    g = guard_of(p)
    return "off" if g is None else f"size>={g.min_size_ratio:g},files>={g.min_files_ratio:g}"


def _guard_of_view(result: PoliciesResult, name: str) -> str:
    policy = next((v.policy for v in result.policies if v.policy.name == name), None)
    if policy is None:
        return "-"
    g = guard_of(policy)
    if g is None:
        return "off: the keep rules delete after any backup"
    return (f"retention held when a backup is under {g.min_size_ratio:g} of the last accepted one's size or "
            f"{g.min_files_ratio:g} of its entries")


def _drill(last: LastVerify | None) -> str:
    if last is None:
        return "never"
    result = "passed" if last.ok else f"FAILED: {last.error}"
    return f"{last.verified_at} of {last.backup_id}: {result}"


def _keep(p: BackupPolicy) -> str:
    return " ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(p.keep).items() if v) or "-"
