"""`volume-agent auth harden-buckets`: turn rollups off on the streams and buckets older versions made.

    volume-agent auth harden-buckets --nats tls://nats-1:4222 --tls-ca ca.crt --seed seeds/ops.nk [--dry-run]

KV buckets made by volume-agent before this version (nats-py's `create_key_value`) accept rollup headers: one
publish with `Nats-Rollup: all` to a key one may write empties the whole bucket, and NATS permissions cannot filter
on headers. Agents make new buckets without them (agent/streams.py `kv_stream`) but may only create streams, never
update them; this command, run with an admin's credentials, updates the existing ones in place: rollups off, and
purges through the API refused (no agent or volumectl purges these buckets; it deletes keys with markers).
Contents, history, max age and sizes are kept. Per-message TTL stays on where it is: NATS cannot turn it off on
an existing stream. The command, events and audit streams are checked too (they never allowed rollups unless
someone changed them). Object Store buckets (`<prefix>_backups_<host>`) are left alone: their metadata needs
rollups, and only their own host's agent may write them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.js.errors
from nats.js import JetStreamContext

from contracts import DEFAULT_PREFIX, Subjects
from volumectl.local import connect_options
from volumectl.redact import redact

from ..streams import rollup_risks

__all__ = ["Hardened", "add_parser", "harden", "run"]


@dataclass(frozen=True)
class Hardened:
    stream: str
    what: str
    """"hardened", "would harden" (a dry run), "already" or "absent"."""
    note: str = ""


def streams_to_check(s: Subjects) -> list[tuple[str, bool]]:
    """(stream, purges to refuse too) for every stream the agents make but their Object Stores."""
    return [(f"KV_{bucket}", True) for bucket in rollup_risks(s)] + \
        [(name, False) for name in (s.cmd_stream, s.res_stream, s.evt_stream)]


async def harden(js: JetStreamContext, s: Subjects, *, dry_run: bool = False) -> list[Hardened]:
    """Update each stream of `streams_to_check` that allows rollups (or, for a KV bucket, purges); what was done."""
    out = []
    for name, deny_purge in streams_to_check(s):
        try:
            cfg = (await js.stream_info(name)).config
        except nats.js.errors.NotFoundError:
            out.append(Hardened(name, "absent", "agents make it without rollups"))
            continue
        note = "per-message TTL stays allowed: NATS cannot turn it off" if cfg.allow_msg_ttl else ""
        if not cfg.allow_rollup_hdrs and (cfg.deny_purge or not deny_purge):
            out.append(Hardened(name, "already", note))
            continue
        if not dry_run:
            await js.update_stream(dataclasses.replace(
                cfg, allow_rollup_hdrs=False, deny_purge=bool(cfg.deny_purge) or deny_purge))
        out.append(Hardened(name, "would harden" if dry_run else "hardened", note))
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    h = sub.add_parser("harden-buckets", help="turn rollups and purges off on buckets older versions made "
                                              "(needs an admin's NATS credentials)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_argument("--nats", default=os.environ.get("VOLUME_AGENT_NATS") or "nats://127.0.0.1:4222",
                   help="comma-separated NATS URLs")
    h.add_argument("--seed", default=os.environ.get("VOLUME_AGENT_SEED"), metavar="FILE",
                   help="an admin's nkey seed (seeds/<admin>.nk from `auth init`)")
    h.add_argument("--tls-ca", default=os.environ.get("VOLUME_AGENT_NATS_TLS_CA"), metavar="FILE")
    h.add_argument("--prefix", default=os.environ.get("VOLUME_AGENT_SUBJECT_PREFIX") or DEFAULT_PREFIX)
    h.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")


async def _quiet(exc: Exception) -> None:
    """nats-py logs every connection error by default; what matters is said once, below."""


async def _run(a: argparse.Namespace) -> int:
    s = Subjects(a.prefix)
    urls = [u.strip() for u in a.nats.split(",") if u.strip()]
    try:
        nc = await nats.connect(servers=urls, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=1,
                                error_cb=_quiet, **connect_options(urls, Path(a.seed) if a.seed else None, a.tls_ca))
    except Exception as exc:  # any connect failure is one sentence for a person
        print(f"volume-agent auth: cannot connect to NATS at {redact(a.nats)}: "
              f"{redact(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        done = await harden(nc.jetstream(timeout=10), s, dry_run=a.dry_run)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.APIError) as exc:
        print(f"volume-agent auth: the streams were not all updated ({exc or type(exc).__name__}): this needs an "
              "admin's NATS credentials (`auth init --admin NAME`; operators and agents may not update streams) "
              "and JetStream on.", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    for h in done:
        print(f"  {h.what:<12} {h.stream}" + (f"  ({h.note})" if h.note else ""))
    return 0


def run(a: argparse.Namespace) -> int:
    """`harden-buckets`: 0 done (or nothing to do), 1 not connected or not allowed."""
    return asyncio.run(_run(a))
