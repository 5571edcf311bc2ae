"""volumectl's command line: the parser, and the op and body each command asks for."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from . import policy_cli

__all__ = ["DEFAULT_NATS", "parser", "request_of"]

DEFAULT_NATS = "nats://127.0.0.1:4222"


def _kv(items: list[str] | None, what: str, p: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"{what} {item!r} must look like KEY=VALUE")
        out[key] = value
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="volumectl", description="Manage Docker volumes through volume-agent.")
    p.add_argument("--nats", default=os.environ.get("VOLUME_AGENT_NATS") or DEFAULT_NATS, help="NATS URLs")
    p.add_argument("--host", default=os.environ.get("VOLUME_AGENT_HOST_ID") or socket.gethostname().split(".")[0],
                   help="the agent's host id (default: this machine)")
    p.add_argument("--prefix", default=os.environ.get("VOLUME_AGENT_SUBJECT_PREFIX") or "vol")
    p.add_argument("--seed", default=os.environ.get("VOLUME_AGENT_SEED"), metavar="FILE",
                   help="your nkey seed file (SU..., mode 600): every request is signed with it; agents refuse "
                   "what is not signed by a key in their policy file")
    p.add_argument("--tls-ca", default=os.environ.get("VOLUME_AGENT_NATS_TLS_CA"), metavar="FILE",
                   help="the CA that signed the NATS server's certificate (TLS from the first byte)")
    p.add_argument("--name", dest="identity", default=os.environ.get("VOLUME_AGENT_NAME"),
                   help="your identity's name: replies come to the inbox _INBOX_<name>, which NATS may allow you alone")
    p.add_argument("--timeout", type=float, help="seconds to wait for a reply (default 30; an hour for backup, "
                   "restore, clone, migrate, digest, verify and rm --backup-first)")
    p.add_argument("--json", action="store_true", help="print the reply envelope as JSON")
    p.add_argument("--id", help="idempotency key of the command")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    c = sub.add_parser("create", help="create a volume")
    c.add_argument("name")
    c.add_argument("--driver", "-d", default="local")
    c.add_argument("--opt", "-o", action="append", help="driver option KEY=VALUE")
    c.add_argument("--label", action="append", help="label KEY=VALUE")

    i = sub.add_parser("inspect", help="show a volume and the containers that use it")
    i.add_argument("name")

    ls = sub.add_parser("ls", help="list volumes")
    ls.add_argument("--filter", "-f", action="append", help="label=KEY[=VALUE], driver=NAME, dangling=true|false")
    ls.add_argument("--all-hosts", action="store_true", help="ask every agent (vol.all.list)")
    ls.add_argument("--window", type=float, default=2.0, help="seconds to gather replies with --all-hosts")

    rm = sub.add_parser("rm", help="remove a volume")
    rm.add_argument("name")
    rm.add_argument("--force", "-f", action="store_true", help="ignore driver errors (never removes a used volume)")
    rm.add_argument("--backup-first", action="store_true", help="make a final backup; if it fails, remove nothing")

    pr = sub.add_parser("prune", help="remove volumes no container uses")
    pr.add_argument("--dry-run", action="store_true", help="name them, remove none")
    pr.add_argument("--label", action="append", help="only volumes with this label (KEY or KEY=VALUE)")

    sh = sub.add_parser("share", help="create a container that takes or mounts volumes")
    sh.add_argument("name", help="the new container's name")
    sh.add_argument("--image", required=True)
    sh.add_argument("--volumes-from", action="append", help="CONTAINER[:ro]")
    sh.add_argument("--mount", "-v", action="append", help="VOLUME:/target[:ro]")
    sh.add_argument("--env", "-e", action="append", help="KEY=VALUE")
    sh.add_argument("--start", action="store_true", help="start the container")
    b = sub.add_parser("backup", help="back up a volume")
    b.add_argument("volume")
    b.add_argument("--compression", choices=["zstd", "gzip", "none"], default="zstd")
    b.add_argument("--keep", type=int, help="keep only the newest N backups of this volume")
    b.add_argument("--stop-containers", action="store_true", help="stop the volume's running users meanwhile")
    b.add_argument("--store", choices=["local", "nats"], default="local",
                   help="local: this host's data dir; nats: the shared store every host can restore from")
    b.add_argument("--encrypt-to", action="append", metavar="RECIPIENT",
                   help="encrypt to this age public key (age1...; repeat for several); restoring needs one of their "
                        "identities in the restoring agent's --age-identity")

    bs = sub.add_parser("backups", help="list backups, newest first")
    bs.add_argument("volume", nargs="?")
    bs.add_argument("--made-here", action="store_true", help="only backups this host made")
    bs.add_argument("--all-hosts", action="store_true", help="ask every agent (vol.all.backups)")
    bs.add_argument("--window", type=float, default=2.0, help="seconds to gather replies with --all-hosts")
    bs.add_argument("--explain-keep", action="store_true",
                    help="which keep rule of the policy that made each backup keeps it (or forgets it next run)")

    mg = sub.add_parser("migrate", help="move a volume to another host (through the shared store)")
    mg.add_argument("volume")
    mg.add_argument("--to", required=True, help="the target host id")
    mg.add_argument("--target", help="the volume's name there (default: the same)")
    mg.add_argument("--remove-source", action="store_true", help="remove the volume here once the copy is verified")
    mg.add_argument("--overwrite", action="store_true", help="replace the content of a non-empty target")

    dg = sub.add_parser("digest", help="a digest of a volume's content (equal digests: equal trees)")
    dg.add_argument("volume")

    inv = sub.add_parser("inventory", help="this host's inventory snapshot, or every host's with --all-hosts")
    inv.add_argument("--all-hosts", action="store_true", help="ask every agent (vol.all.inventory)")
    inv.add_argument("--window", type=float, default=2.0, help="seconds to gather replies with --all-hosts")

    fl = sub.add_parser("fleet", help="every host's volumes and last backups, from the inventory bucket")
    fl.add_argument("--unprotected", type=float, nargs="?", const=0.0, metavar="HOURS",
                    help="only volumes at risk, each with why: no policy covers it, its policy is failing, overdue or "
                         "suspect, or (with HOURS) it has no backup that recent; exit 3 if there are any")

    r = sub.add_parser("restore", help="restore a backup into a volume")
    r.add_argument("backup_id")
    r.add_argument("volume")
    r.add_argument("--overwrite", action="store_true", help="replace the volume's content with the backup")

    cl = sub.add_parser("clone", help="copy a volume exactly")
    cl.add_argument("source")
    cl.add_argument("target")

    fg = sub.add_parser("forget", help="delete a backup")
    fg.add_argument("backup_id")

    vf = sub.add_parser("verify", help="a restore drill: restore a backup into a scratch directory on the agent's "
                        "host, compare it with the digest taken when it was made, remove it")
    vf.add_argument("backup_id")

    policy_cli.add_parser(sub)
    sh.epilog = "The container's command, if any, follows `--`: volumectl share app --image img -- sleep 60"
    return p


def request_of(a: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[str, dict[str, Any]]:
    """The op and body a command line asks for."""
    body: dict[str, Any]
    match a.cmd:
        case "create":
            body = {"name": a.name, "driver": a.driver, "driver_opts": _kv(a.opt, "--opt", p),
                    "labels": _kv(a.label, "--label", p)}
            op = "create"
        case "inspect":
            op, body = "inspect", {"name": a.name}
        case "ls":
            filters: dict[str, Any] = {}
            for f in a.filter or []:
                key, _, value = f.partition("=")
                if key == "label":
                    filters.setdefault("label", []).append(value)
                elif key == "driver":
                    filters["driver"] = value
                elif key == "dangling" and value in ("true", "false"):
                    filters["dangling"] = value == "true"
                else:
                    p.error(f"unknown filter {f!r}: use label=..., driver=... or dangling=true|false")
            op, body = "list", ({"filters": filters} if filters else {})
        case "rm":
            op, body = "remove", {"name": a.name, "force": a.force, "backup_first": a.backup_first}
        case "backup":
            body = {"volume": a.volume, "compression": a.compression, "stop_containers": a.stop_containers,
                    "store": a.store}
            if a.keep is not None:
                body["keep"] = a.keep
            if a.encrypt_to:
                body["encrypt_to"] = a.encrypt_to
            op = "backup"
        case "backups":
            op, body = "backups", {k: v for k, v in (("volume", a.volume), ("made_here", a.made_here or a.all_hosts))
                                   if v}
        case "migrate":
            body = {"volume": a.volume, "to": a.to, "remove_source": a.remove_source, "overwrite": a.overwrite}
            if a.target:
                body["target"] = a.target
            op = "migrate"
        case "digest":
            op, body = "digest", {"volume": a.volume}
        case "inventory":
            op, body = "inventory", {}
        case "fleet":
            op, body = "fleet", {}
        case "policy":
            op, body = "policy", {}
        case "restore":
            op, body = "restore", {"backup_id": a.backup_id, "volume": a.volume, "overwrite": a.overwrite}
        case "clone":
            op, body = "clone", {"source": a.source, "target": a.target}
        case "forget":
            op, body = "forget", {"backup_id": a.backup_id}
        case "verify":
            op, body = "verify", {"backup_id": a.backup_id}
        case "prune":
            op, body = "prune", {"dry_run": a.dry_run, **({"label": a.label} if a.label else {})}
        case "share":
            command = a.command
            container: dict[str, Any] = {"name": a.name, "image": a.image, "env": _kv(a.env, "--env", p),
                                         "start": a.start}
            if command:
                container["command"] = command
            mounts = []
            for m in a.mount or []:
                parts = m.split(":")
                if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                    p.error(f"--mount {m!r} must look like VOLUME:/target[:ro]")
                mounts.append({"volume": parts[0], "target": parts[1], "readonly": parts[2:] == ["ro"]})
            vfrom = []
            for v in a.volumes_from or []:
                name, _, mode = v.partition(":")
                if mode not in ("", "ro", "rw"):
                    p.error(f"--volumes-from {v!r} must look like CONTAINER[:ro]")
                vfrom.append({"container": name, "readonly": mode == "ro"})
            op, body = "share", {"container": container, "mounts": mounts, "volumes_from": vfrom}
    if a.id:
        body["id"] = a.id
    return op, body
