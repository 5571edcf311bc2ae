"""`volumectl`: a docker-like client of the agents. Tables for people, `--json` for machines.

Exit codes: 0 success, 1 an error reply (or no agent answered), 2 usage errors,
3 `fleet --unprotected` found volumes at risk (not covered by a policy, its policy failing or overdue, or, with
HOURS, no backup that recent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nkeys

from contracts import BackupsResult, Reply, result_as

from . import args, policy_cli, render
from .client import AgentClient, NoAgent
from .fleet import fleet_rows, unprotected
from .kv import READ_TIMEOUT_S, IncompleteRead
from .local import LOCAL_OPERATOR_SEED, connect_options, local_seed
from .redact import redact
from .signing import Signer

__all__ = ["main"]

async def _fleet(a: argparse.Namespace, client: AgentClient) -> int:
    try:
        snapshots = await client.inventories(a.timeout if a.timeout is not None else READ_TIMEOUT_S)
    except IncompleteRead as exc:  # never a table that leaves hosts out
        print(f"volumectl: {exc} No table printed; try again, or raise --timeout.", file=sys.stderr)
        return 1
    risk = a.unprotected is not None
    hours = a.unprotected if a.unprotected and a.unprotected > 0 else None
    rows = unprotected(snapshots, hours) if risk else fleet_rows(snapshots)
    if a.json:
        print(msgspec.json.encode(snapshots if not risk else [
            {"host": r.host, "volume": r.volume.name if r.volume else None, "stale": r.stale,
             "last_backup": r.volume.last_backup if r.volume else None, "why": r.why} for r in rows]).decode())
    else:
        print(render.fleet_table(rows, why=risk))
        for s in snapshots:
            for rp in s.rejected_policies:
                print(f"{s.host} ignores policy {rp.name}: {rp.reason}", file=sys.stderr)
        stale = sorted({r.host for r in rows if r.stale})
        print(f"{len(snapshots)} host(s) in the inventory" + (f"; stale: {', '.join(stale)}" if stale else ""),
              file=sys.stderr)
    if risk and rows:
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
    # Your own seed, else this host's local operator's (when its agent runs the embedded server).
    seed = Path(a.seed) if a.seed else local_seed()
    name = a.identity  # not `a.name`: that is the volume or container a command names
    try:
        signer = Signer.from_file(seed) if seed else None
    except (OSError, ValueError, nkeys.NkeysError) as exc:
        print(f"volumectl: cannot sign with the seed file {seed}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        # One identity: its seed authenticates to NATS and signs every request.
        client = await AgentClient.connect(urls, a.prefix, signer=signer,
                                           inbox_prefix=f"_INBOX_{name}" if name else None,
                                           **connect_options(urls, seed, a.tls_ca))
    except Exception as exc:  # any connect failure is one sentence for a person
        print(f"volumectl: cannot connect to NATS at {redact(a.nats)}: {redact(str(exc)) or type(exc).__name__}",
              file=sys.stderr)
        if seed is None and "authorization" in str(exc).lower():
            print(f"volumectl: the agent's embedded server admits the local operator, whose seed is "
                  f"<data dir>/{LOCAL_OPERATOR_SEED} (root only): run volumectl as root, and set "
                  "VOLUME_AGENT_DATA_DIR if the agent runs with another --data-dir than /var/lib/volume-agent.",
                  file=sys.stderr)
        return 1
    try:
        if op == "fleet":
            return await _fleet(a, client)
        if op == "policy":
            return await policy_cli.run(a, client)
        if op == "backups" and a.explain_keep:
            reply = await client.request(a.host, "backups", body, timeout=a.timeout or 30.0)
            if reply.error is not None:
                return _print_reply(a, reply)
            return await policy_cli.explain_keep(a, client, result_as(reply, BackupsResult).backups)
        if op in ("list", "backups", "inventory") and getattr(a, "all_hosts", False):
            return _print_fleet(a, op, await client.gather(op, body, window=a.window))
        progress = None
        if op in LONG_OPS and not a.json and sys.stderr.isatty():
            body.setdefault("id", uuid.uuid4().hex)
            progress = asyncio.create_task(_show_progress(client, a.host, LONG_OPS[op], body["id"]))
        try:
            long = op in ("backup", "restore", "clone", "migrate", "digest", "verify") or body.get("backup_first")
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
    # asyncio's own warnings (e.g. closing a TLS connection) are not for volumectl's user: errors are sentences.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    p = args.parser()
    argv = sys.argv[1:] if argv is None else argv
    # Everything after `--` is the shared container's command, never options of ours.
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    a = p.parse_args(argv)
    if a.identity is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", a.identity):
        p.error(f"--name {a.identity!r} must match [A-Za-z0-9_-]{{1,64}}")
    if command and a.cmd != "share":
        p.error("only share takes a command after --")
    a.command = command
    op, body = args.request_of(a, p)
    return asyncio.run(_run(a, op, body))


if __name__ == "__main__":
    sys.exit(main())
