"""`volume-agent auth init DIR ...`: a fleet's identities, their NATS permissions and the agents' policy.
(`volume-agent auth harden-buckets` updates buckets older versions made: agent/auth/buckets.py.)

    volume-agent auth init /etc/volume-agent/auth --host web-1 --host web-2 \\
        --operator alice --operator bob:web-1,web-2 --reader grafana --admin ops

writes, in DIR:
    seeds/<name>.nk     one nkey user seed per identity (mode 600, in a directory of mode 700): the secrets
    identities.json     the public registry (name, role, public key, an operator's hosts), re-read on every run
    nats-auth.conf      `authorization { users: [...] }` for nats-server.conf to include (agent/auth/permissions.py)
    policy.toml         the agents' local policy (agent/auth/policy.py) listing every identity and its role

Re-runnable: names already in the registry keep their keys (and a seed already in DIR is used, never replaced);
new names are added; names left out of the command line stay. Seeds are never printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from contracts import DEFAULT_PREFIX, Subjects, inbox_prefix, valid_host_id
from volumectl.signing import Signer, new_user_seed

from . import buckets
from .permissions import render_authorization
from .policy import IdentityEntry, render_policy
from .registry import REGISTRY, Registry, encode_registry, load_registry, merged_policy, write_atomically

__all__ = ["main"]

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
AUTH_CONF = "nats-auth.conf"
POLICY = "policy.toml"


class Refused(Exception):
    """What the run will not do, as a sentence; nothing was written."""


@dataclass(frozen=True)
class Wanted:
    name: str
    role: str
    hosts: list[str] | None = None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="volume-agent auth", description="Identities and NATS authorization.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    i = sub.add_parser("init", help="make or extend a fleet's identities, NATS users and policy in DIR",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("dir", type=Path, metavar="DIR")
    i.add_argument("--host", action="append", default=[], metavar="HOST_ID", help="an agent, by its host id")
    i.add_argument("--operator", action="append", default=[], metavar="NAME[:HOST,...]",
                   help="may run every op; on the listed hosts only, if given")
    i.add_argument("--reader", action="append", default=[], metavar="NAME", help="may run read ops")
    i.add_argument("--admin", action="append", default=[], metavar="NAME",
                   help="everything on the bus, streams and buckets included")
    i.add_argument("--prefix", help=f"subject prefix (default: the registry's, or {DEFAULT_PREFIX})")
    buckets.add_parser(sub)
    return p


def wanted_of(a: argparse.Namespace) -> list[Wanted]:
    out = [Wanted(h, "agent") for h in a.host]
    for spec in a.operator:
        name, colon, hosts = spec.partition(":")
        out.append(Wanted(name, "operator", [h for h in hosts.split(",") if h] if colon else None))
    out += [Wanted(n, "reader") for n in a.reader] + [Wanted(n, "admin") for n in a.admin]
    names = [w.name for w in out]
    for w in out:
        if not NAME.match(w.name):
            raise Refused(f"{w.name!r} is not a valid name: use 1 to 64 of A-Z a-z 0-9 _ -.")
        if w.role == "agent" and not valid_host_id(w.name):
            raise Refused(f"{w.name!r} cannot be a host id ('all' is reserved).")
        if names.count(w.name) > 1:
            raise Refused(f"{w.name!r} is named twice: names are unique across roles.")
        for h in w.hosts or ():
            if not valid_host_id(h):
                raise Refused(f"Operator {w.name}: {h!r} is not a valid host id.")
        if w.hosts == []:
            raise Refused(f"Operator {w.name}: no host after ':' (leave out ':' for every host).")
    return out


def _existing_key(seeds: Path, name: str) -> str | None:
    path = seeds / f"{name}.nk"
    return Signer.from_file(path).public_key if path.exists() else None


def _new_seed(seeds: Path, name: str) -> str:
    """A new seed in `seeds/<name>.nk` (mode 600, never replacing a file); its public key."""
    seed = new_user_seed()
    with os.fdopen(os.open(seeds / f"{name}.nk", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(seed + b"\n")
    return Signer(seed).public_key


def check(registry: Registry, wanted: list[Wanted], seeds: Path) -> dict[str, str]:
    """Refuse what cannot be merged, before anything is written; the keys of the seeds already in `seeds`."""
    known, found = registry.by_name(), {}
    for w in wanted:
        old = known.get(w.name)
        if old is not None and old.role != w.role:
            raise Refused(f"{w.name} is already in {REGISTRY} as {old.role}; remove it there to give the name "
                          "another role (and a new key).")
        key = _existing_key(seeds, w.name)
        if key is not None:
            if old is not None and key != old.key:
                raise Refused(f"seeds/{w.name}.nk holds another key than {REGISTRY} has for {w.name}.")
            found[w.name] = key
    keys = [i.key for i in registry.identities] + [k for n, k in found.items() if n not in known]
    if len(set(keys)) != len(keys):
        raise Refused("Two identities would share a key (a seed file copied under another name?).")
    return found


def merge(registry: Registry, wanted: list[Wanted], seeds: Path) -> tuple[Registry, list[tuple[str, IdentityEntry]]]:
    """The registry with `wanted` in it (new seeds made), and what happened to each name."""
    found = check(registry, wanted, seeds)
    known = registry.by_name()
    report: list[tuple[str, IdentityEntry]] = []
    for w in wanted:
        old = known.get(w.name)
        hosts = w.hosts if w.role == "operator" else None
        if old is not None:
            key, what = old.key, "changed" if old.hosts != hosts else "kept"
        elif w.name in found:
            key, what = found[w.name], "added (its seed was already in seeds/)"
        else:
            key, what = _new_seed(seeds, w.name), "added"
        entry = IdentityEntry(name=w.name, key=key, role=w.role, hosts=hosts)  # type: ignore[arg-type]
        known[w.name] = entry
        report.append((what, entry))
    return Registry(prefix=registry.prefix, identities=list(known.values())), report


def init(a: argparse.Namespace) -> int:
    d: Path = a.dir.resolve()
    wanted = wanted_of(a)
    registry = load_registry(d / REGISTRY)
    if registry is None:
        if not wanted:
            raise Refused("Name at least one identity (--host, --operator, --reader, --admin).")
        registry = Registry(prefix=a.prefix or DEFAULT_PREFIX)
    elif a.prefix and a.prefix != registry.prefix:
        raise Refused(f"{d / REGISTRY} is for the subject prefix {registry.prefix!r}, not {a.prefix!r}.")
    # Whatever is refused is refused before anything is written: a bad prefix, an invalid policy file, a clash.
    Subjects(registry.prefix)
    policy = merged_policy(d / POLICY, [])
    seeds = d / "seeds"
    check(registry, wanted, seeds)
    seeds.mkdir(parents=True, exist_ok=True)
    os.chmod(seeds, 0o700)
    registry, report = merge(registry, wanted, seeds)
    write_atomically(d / REGISTRY, encode_registry(registry))
    write_atomically(d / AUTH_CONF, render_authorization(registry.identities, registry.prefix).encode())
    policy = msgspec.structs.replace(policy, identity=registry.identities)
    write_atomically(d / POLICY, render_policy(policy).encode())
    _print_summary(d, registry, report)
    return 0


def _print_summary(d: Path, registry: Registry, report: list[tuple[str, IdentityEntry]]) -> None:
    listed = {e.name for _, e in report}
    rows = report + [("unchanged", e) for e in registry.identities if e.name not in listed]
    for what, e in rows:
        hosts = f" on {', '.join(e.hosts)}" if e.hosts is not None else ""
        print(f"  {what:<9} {e.name:<16} {e.role + hosts:<24} {e.key}")
    strays = sorted(p.stem for p in (d / "seeds").glob("*.nk") if p.stem not in registry.by_name())
    for name in strays:
        print(f"  note: seeds/{name}.nk is no identity's in {REGISTRY} (revoked?): it cannot connect; delete it.")
    conf = (d / AUTH_CONF).resolve()
    print(f"""Wrote {d / REGISTRY}, {conf} and {d / POLICY}; the seeds are in {d / 'seeds'} (secrets: mode 600).
Next:
  1. On every NATS node: copy {AUTH_CONF} beside nats-server.conf, add the line `include {AUTH_CONF}` to it
     (nats-server resolves an include relative to the including file), and reload: nats-server --signal reload
     From then on a client without one of these keys cannot connect.
  2. On each host: copy seeds/<host>.nk there (mode 600, e.g. /etc/volume-agent/nats.nk) and {POLICY}, and run
     volume-agent --host-id <host> --nats-nkey-seed /etc/volume-agent/nats.nk
  3. Give each person their seeds/<name>.nk; clients connect with it (nats-py: nkeys_seed=...) and the inbox
     prefix _INBOX_<name> (e.g. {inbox_prefix('alice')}), the only inboxes their NATS user may subscribe to.
  4. Later: run this again with new names to add them (existing keys stay), then reload NATS and copy {POLICY}
     again. To revoke one, remove it from {REGISTRY}, run this again, reload.""")


def main(argv: list[str] | None = None) -> int:
    """`volume-agent auth ...`: 0 done, 2 refused (a sentence on stderr; nothing written); harden-buckets: 1 not
    done."""
    p = parser()
    a = p.parse_args(sys.argv[2:] if argv is None else argv)
    if a.cmd == "harden-buckets":
        return buckets.run(a)
    try:
        return init(a)
    except (Refused, ValueError, PermissionError) as exc:
        print(f"volume-agent auth: {exc}", file=sys.stderr)
        return 2
