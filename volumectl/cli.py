"""`volumectl`: a docker-like client of the agents. Tables for people, `--json` for machines.

Exit codes: 0 success, 1 an error reply (or no agent answered), 2 usage errors,
3 `fleet --unprotected` found volumes without a recent backup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import uuid
from typing import Any

import msgspec

from contracts import Reply

from . import render
from .client import AgentClient, NoAgent
from .fleet import fleet_rows, unprotected
from .kv import READ_TIMEOUT_S, IncompleteRead

__all__ = ["main"]

DEFAULT_NATS = "nats://127.0.0.1:4222"


def _kv(items: list[str] | None, what: str, p: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"{what} {item!r} must look like KEY=VALUE")
        out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="volumectl", description="Manage Docker volumes through volume-agent.")
    p.add_argument("--nats", default=os.environ.get("VOLUME_AGENT_NATS") or DEFAULT_NATS, help="NATS URLs")
    p.add_argument("--host", default=os.environ.get("VOLUME_AGENT_HOST_ID") or socket.gethostname().split(".")[0],
                   help="the agent's host id (default: this machine)")
    p.add_argument("--prefix", default=os.environ.get("VOLUME_AGENT_SUBJECT_PREFIX") or "vol")
    p.add_argument("--timeout", type=float, help="seconds to wait for a reply (default 30; an hour for backup, "
                   "restore, clone, migrate, digest and rm --backup-first)")
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

    bs = sub.add_parser("backups", help="list backups, newest first")
    bs.add_argument("volume", nargs="?")
    bs.add_argument("--made-here", action="store_true", help="only backups this host made")
    bs.add_argument("--all-hosts", action="store_true", help="ask every agent (vol.all.backups)")
    bs.add_argument("--window", type=float, default=2.0, help="seconds to gather replies with --all-hosts")

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
    fl.add_argument("--unprotected", type=float, metavar="HOURS",
                    help="only volumes without a backup in the last HOURS (exit 3 if there are any)")

    r = sub.add_parser("restore", help="restore a backup into a volume")
    r.add_argument("backup_id")
    r.add_argument("volume")
    r.add_argument("--overwrite", action="store_true", help="replace the volume's content with the backup")

    cl = sub.add_parser("clone", help="copy a volume exactly")
    cl.add_argument("source")
    cl.add_argument("target")

    fg = sub.add_parser("forget", help="delete a backup")
    fg.add_argument("backup_id")

    sh.epilog = "The container's command, if any, follows `--`: volumectl share app --image img -- sleep 60"
    return p


def _request(a: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[str, dict[str, Any]]:
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
        case "restore":
            op, body = "restore", {"backup_id": a.backup_id, "volume": a.volume, "overwrite": a.overwrite}
        case "clone":
            op, body = "clone", {"source": a.source, "target": a.target}
        case "forget":
            op, body = "forget", {"backup_id": a.backup_id}
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


async def _fleet(a: argparse.Namespace, client: AgentClient) -> int:
    try:
        snapshots = await client.inventories(a.timeout if a.timeout is not None else READ_TIMEOUT_S)
    except IncompleteRead as exc:  # never a table that leaves hosts out
        print(f"volumectl: {exc} No table printed; try again, or raise --timeout.", file=sys.stderr)
        return 1
    rows = unprotected(snapshots, a.unprotected) if a.unprotected is not None else fleet_rows(snapshots)
    if a.json:
        print(msgspec.json.encode(snapshots if a.unprotected is None else [
            {"host": r.host, "volume": r.volume.name if r.volume else None, "stale": r.stale,
             "last_backup": r.volume.last_backup if r.volume else None} for r in rows]).decode())
    else:
        print(render.fleet_table(rows))
        stale = sorted({r.host for r in rows if r.stale})
        print(f"{len(snapshots)} host(s) in the inventory" + (f"; stale: {', '.join(stale)}" if stale else ""),
              file=sys.stderr)
    if a.unprotected is not None and rows:
        return 3
    return 0


LONG_OPS = {"backup": "backup", "restore": "restore"}


async def _show_progress(client: AgentClient, host: str, kind: str, cmd_id: str) -> None:
    """A one-line progress display on stderr from the agent's `<kind>.progress` events of this command."""
    sub = await client.nc.subscribe(f"{client.subjects.prefix}.evt.{host}.{kind}.progress")
    try:
        async for msg in sub.messages:
            evt = msgspec.json.decode(msg.data)
            if evt.get("cmd_id") == cmd_id:
                done = render.size(evt.get("bytes_done") or 0)
                print(f"\r{kind} {evt['volume']}: {done} ...", end="", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):  # the display is best effort; the reply is what counts
            await sub.unsubscribe()


async def _run(a: argparse.Namespace, op: str, body: dict[str, Any]) -> int:
    urls = [u.strip() for u in a.nats.split(",") if u.strip()]
    try:
        client = await AgentClient.connect(urls, a.prefix)
    except Exception as exc:  # any connect failure is one sentence for a person
        print(f"volumectl: cannot connect to NATS at {a.nats}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        if op == "fleet":
            return await _fleet(a, client)
        if op in ("list", "backups", "inventory") and getattr(a, "all_hosts", False):
            return _print_fleet(a, op, await client.gather(op, body, window=a.window))
        progress = None
        if op in LONG_OPS and not a.json and sys.stderr.isatty():
            body.setdefault("id", uuid.uuid4().hex)
            progress = asyncio.create_task(_show_progress(client, a.host, LONG_OPS[op], body["id"]))
        try:
            long = op in ("backup", "restore", "clone", "migrate", "digest") or body.get("backup_first")
            timeout = a.timeout if a.timeout is not None else (3600.0 if long else 30.0)
            reply = await client.request(a.host, op, body, timeout=timeout)
        except NoAgent as exc:
            print(f"volumectl: {exc}", file=sys.stderr)
            return 1
        finally:
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
                print("\r\033[K", end="", file=sys.stderr)
        return _print_reply(a, reply)
    finally:
        await client.close()


def _print_reply(a: argparse.Namespace, reply: Reply) -> int:
    if a.json:
        print(msgspec.json.encode(reply).decode())
    elif reply.ok and reply.result is not None:
        print(render.human(reply.op, reply.result))
    if reply.error is not None:
        print(f"volumectl: {reply.error.code}: {reply.error.message}", file=sys.stderr)
        return 1
    return 0


def _print_fleet(a: argparse.Namespace, op: str, replies: list[Reply]) -> int:
    if a.json:
        print(msgspec.json.encode(replies).decode())
    elif op == "list":
        rows = []
        for r in replies:
            if r.ok and r.result is not None:
                rows += render.show_volumes(r.result["volumes"], r.host)
        print(render.table(rows, ["HOST", "NAME", "DRIVER", "USED BY", "LABELS"]))
    elif op == "backups":
        backups = [b for r in replies if r.ok and r.result is not None for b in r.result["backups"]]
        print(render.backups_table(sorted(backups, key=lambda b: b["created_at"], reverse=True)))
    else:
        print("\n\n".join(render.inventory_text(r.result) for r in replies if r.ok and r.result is not None))
    answered = [r.host for r in replies]
    print(f"{len(answered)} host(s) answered: {', '.join(answered) or 'none'}", file=sys.stderr)
    failed = [r for r in replies if r.error is not None]
    for r in failed:
        print(f"volumectl: {r.host}: {r.error.code}: {r.error.message}", file=sys.stderr)  # type: ignore[union-attr]
    return 1 if failed or not replies else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `volumectl`."""
    p = _parser()
    argv = sys.argv[1:] if argv is None else argv
    # Everything after `--` is the shared container's command, never options of ours.
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    a = p.parse_args(argv)
    if command and a.cmd != "share":
        p.error("only share takes a command after --")
    a.command = command
    op, body = _request(a, p)
    return asyncio.run(_run(a, op, body))


if __name__ == "__main__":
    sys.exit(main())
