"""volumectl's commands run against the bus: one connection, one identity, the reply shown for a person or as JSON.

Everything that can go wrong ends as a sentence and an exit code (`output.fail`), never a traceback: no agent
answering, NATS refusing this identity (said within a second: `refusals`), Ctrl-C (a long operation goes on on
the agent: how to take it up again is said).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nkeys

from contracts import BackupsResult, IncompleteInventory, Reply, Subjects, result_as

from . import policy_cli, render
from .args import LONG_OPS
from .client import AgentClient, NoAgent
from .fleet import fleet_rows, unprotected
from .kv import READ_TIMEOUT_S, IncompleteRead
from .local import LOCAL_OPERATOR_SEED, connect_options, local_seed
from .output import fail
from .redact import redact
from .refusals import Refusals, Refused, Who
from .signing import Signer

__all__ = ["EXIT_INTERRUPTED", "run"]

EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a program Ctrl-C ended."""
PROGRESS_KINDS = {"backup": "backup", "restore": "restore"}


async def run(a: argparse.Namespace, op: str, body: dict[str, Any]) -> int:
    """Connect as the identity the options name, run the command, close; the exit code."""
    # asyncio's own warnings (e.g. closing a TLS connection) are not for volumectl's user: errors are sentences.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    urls = [u.strip() for u in a.nats.split(",") if u.strip()]
    # Your own seed, else this host's local operator's (when its agent runs the embedded server).
    seed = Path(a.seed) if a.seed else local_seed()
    name = a.identity  # not `a.name`: that is the volume or container a command names
    try:
        signer = Signer.from_file(seed) if seed else None
    except (OSError, ValueError, nkeys.NkeysError) as exc:
        return fail(a, "bad_seed", f"cannot sign with the seed file {seed}: {exc or type(exc).__name__}")
    if op in LONG_OPS or body.get("backup_first"):
        body.setdefault("id", uuid.uuid4().hex)  # named, so that an interrupted wait can be taken up again
    refusals = Refusals(Who(name, a.host, Subjects(a.prefix)))
    try:
        # One identity: its seed authenticates to NATS and signs every request.
        client = await AgentClient.connect(urls, a.prefix, signer=signer,
                                           inbox_prefix=f"_INBOX_{name}" if name else None,
                                           error_cb=refusals.report, **connect_options(urls, seed, a.tls_ca))
    except Exception as exc:  # any connect failure is one sentence for a person
        code = fail(a, "unreachable", f"cannot connect to NATS at {redact(a.nats)}: "
                    f"{redact(str(exc)) or type(exc).__name__}")
        if seed is None and "authorization" in str(exc).lower():
            print(f"volumectl: the agent's embedded server admits the local operator, whose seed is "
                  f"<data dir>/{LOCAL_OPERATOR_SEED} (root only): run volumectl as root, and set "
                  "VOLUME_AGENT_DATA_DIR if the agent runs with another --data-dir than /var/lib/volume-agent.",
                  file=sys.stderr)
        return code
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    command = asyncio.ensure_future(refusals.race(_command(a, client, op, body)))
    stopper = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({command, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not command.done():
            command.cancel()
            await asyncio.gather(command, return_exceptions=True)
            return fail(a, "interrupted", _interrupted(a, op, body), EXIT_INTERRUPTED)
        try:
            return command.result()
        except Refused as exc:
            return fail(a, "nats_refused", str(exc))
    finally:
        stopper.cancel()
        loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):  # closing is best effort: the outcome is already said
            await client.close()


def _interrupted(a: argparse.Namespace, op: str, body: dict[str, Any]) -> str:
    """What Ctrl-C leaves behind: a long operation goes on on the agent (there is no cancel op)."""
    if "id" not in body or not (op in LONG_OPS or body.get("backup_first")):
        return "interrupted."
    volume = body.get("volume") or body.get("name") or ""
    follow = f" `volumectl backups {volume}` lists it once it is made." if op == "backup" or body.get(
        "backup_first") else ""
    return (f"interrupted: the {op} goes on on host {a.host}: volumectl only stopped waiting, and an agent has no "
            f"way to cancel it. To wait for its outcome, run the same command again with --id {body['id']} (the "
            f"agent answers it with that command's outcome, never runs it twice).{follow} Its events: "
            f"{a.prefix}.evt.{a.host}.{op}.>")


async def _command(a: argparse.Namespace, client: AgentClient, op: str, body: dict[str, Any]) -> int:
    if op == "fleet":
        return await _fleet(a, client)
    if op == "policy":
        return await policy_cli.run(a, client)
    try:
        if op == "backups" and a.explain_keep:
            reply = await client.request(a.host, "backups", body, timeout=a.timeout or 30.0)
            if reply.error is not None:
                return _print_reply(a, reply)
            return await policy_cli.explain_keep(a, client, result_as(reply, BackupsResult).backups)
        if op == "inventory" and a.all_hosts:  # chunk by chunk from the hosts that have several
            return _print_fleet(a, op, await client.gather_inventories(a.window, a.timeout or 30.0))
        if op in ("list", "backups") and getattr(a, "all_hosts", False):
            return _print_fleet(a, op, await client.gather(op, body, window=a.window))
        progress = None
        if op in PROGRESS_KINDS and not a.json and sys.stderr.isatty():
            progress = asyncio.create_task(_show_progress(client, a.host, PROGRESS_KINDS[op], body["id"]))
        try:
            long = op in LONG_OPS or body.get("backup_first")
            timeout = a.timeout if a.timeout is not None else (3600.0 if long else 30.0)
            if op == "inventory":
                reply = await client.inventory(a.host, timeout)
            else:
                reply = await client.request(a.host, op, body, timeout=timeout)
        finally:
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
                print("\r\033[K", end="", file=sys.stderr)
    except NoAgent as exc:
        return fail(a, "no_agent", str(exc))
    return _print_reply(a, reply)


async def _show_progress(client: AgentClient, host: str, kind: str, cmd_id: str) -> None:
    """A one-line progress display on stderr from the agent's `<kind>.progress` events of this command: bytes,
    and with the total the agent expects, percent and time left."""
    sub = await client.nc.subscribe(f"{client.subjects.prefix}.evt.{host}.{kind}.progress")
    await client.nc.flush()  # subscribed before the request goes out
    started = time.monotonic()
    try:
        async for msg in sub.messages:
            evt = msgspec.json.decode(msg.data)
            if evt.get("cmd_id") == cmd_id:
                line = render.progress_line(kind, evt["volume"], evt.get("bytes_done") or 0,
                                            evt.get("bytes_total"), time.monotonic() - started)
                print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):  # the display is best effort; the reply is what counts
            await sub.unsubscribe()


async def _fleet(a: argparse.Namespace, client: AgentClient) -> int:
    unreadable: list[str] = []
    try:
        snapshots = await client.inventories(a.timeout if a.timeout is not None else READ_TIMEOUT_S, unreadable)
    except IncompleteRead as exc:  # never a table that leaves hosts out
        return fail(a, "incomplete", f"{exc} No table printed; try again, or raise --timeout.")
    except IncompleteInventory as exc:  # nor volumes out
        return fail(a, "incomplete", f"{exc} No table printed; try again.")
    for why in unreadable:  # said, never silently left out
        print(f"volumectl: {why}", file=sys.stderr)
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
    return 1 if unreadable else 0


def _print_reply(a: argparse.Namespace, reply: Reply) -> int:
    if a.json:
        print(msgspec.json.encode(reply).decode())
    elif reply.ok and reply.result is not None:
        print(render.human(reply.op, reply.result))
    if reply.ok and reply.result is not None:
        for warning in reply.result.get("warnings") or []:
            print(f"volumectl: warning: {warning}", file=sys.stderr)
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
