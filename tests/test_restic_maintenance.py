"""Retention and maintenance of restic repositories, with real restic (a repository directory), dockerd and NATS:
a policy's keep rules forget only its own snapshots of that volume on that host; repository maintenance (`prune`,
`check`) runs on one host per slot, fleet-wide, under a lease in NATS; a failed check is notified and in the
metrics.

Policies select only their test's own hosts and volumes, and are removed (signed) after the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from contracts import Reply
from volumectl.client import AgentClient

from .conftest import Host
from .identities import Identities
from .restic_backends import restic_env, write_stores
from .stack import Dockerd
from .test_events import subscribe
from .test_policies import Policies, S, coverage_of
from .volfiles import mountpoint

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def policies(client: AgentClient, identities: Identities) -> AsyncIterator[Policies]:
    p = Policies(client, identities)
    yield p
    await p.clean()


def repository(tmp_path: Path, **extra: object) -> dict[str, object]:
    """A store's table for a new repository directory under `tmp_path` (made by the first agent: `init`)."""
    pw = tmp_path / "restic.pass"
    if not pw.exists():
        pw.write_text("correct horse battery staple\n")
        os.chmod(pw, 0o600)
    return {"kind": "restic", "repository": str(tmp_path / f"repo-{uuid.uuid4().hex[:6]}"),
            "password_file": str(pw), "init": True, "cache_dir": str(tmp_path / "cache"), **extra}


def restic(entry: dict[str, object], *args: str) -> subprocess.CompletedProcess[bytes]:
    argv, env = restic_env(entry)
    return subprocess.run([*argv, *args], capture_output=True, env=env, check=True)


def snapshots(entry: dict[str, object]) -> list[dict[str, Any]]:
    return list(json.loads(restic(entry, "snapshots", "--json").stdout))


def tags_of(snap: dict[str, Any]) -> dict[str, str]:
    return dict(t.split("=", 1) for t in snap.get("tags") or [] if "=" in t)


async def policy_outcomes(client: AgentClient, host: str, policy: str, n: int) -> list[Reply]:
    """The next `n` outcomes of `policy`'s scheduled backups on `host` (subscribe before they may come)."""
    sub = await subscribe(client, S.res(host, "backup"))
    out: list[Reply] = []
    try:
        async with asyncio.timeout(60):
            while len(out) < n:
                reply = msgspec.json.decode((await sub.next_msg(timeout=60)).data, type=Reply)
                if reply.caller == f"policy:{policy}":
                    out.append(reply)
    finally:
        await sub.unsubscribe()
    return out


async def test_a_policys_retention_forgets_only_its_own_snapshots_of_that_volume_on_that_host(
    make_agent: Any, dockerd: Dockerd, client: AgentClient, policies: Policies, tmp_path: Path
) -> None:
    entry = repository(tmp_path)
    stores_file = write_stores(tmp_path / "stores.toml", {"shared": entry})
    one = Host((a := make_agent(extra=["--ack-wait", "2", "--stores", str(stores_file)],
                                data_dir=tmp_path / "one")).host_id, dockerd, a, client)
    two = Host((b := make_agent(extra=["--ack-wait", "2", "--stores", str(stores_file)],
                                data_dir=tmp_path / "two")).host_id, dockerd, b, client)
    vol, other_vol = f"kept-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    for v in (vol, other_vol):
        await one.ok("create", {"name": v})
        (mountpoint(dockerd, v) / "f").write_bytes(os.urandom(50_000))
    # What must stay: a manual backup here, another host's backup of the same volume, this host's backup of the
    # same volume under another policy, and this host's backup of another volume under the same policy.
    manual = await one.ok("backup", {"volume": vol, "store": "shared"})
    theirs = await two.ok("backup", {"volume": vol, "store": "shared"})
    name, other = f"trim-{uuid.uuid4().hex[:6]}", f"keepall-{uuid.uuid4().hex[:6]}"
    sub = await subscribe(client, S.res(one.id, "backup"))
    await policies.set(other, one.id, schedule="*/2 * * * * *", keep={"last": 100}, store="shared",
                       selector={"hosts": [one.id], "volumes": [vol]})
    await policies.set(name, one.id, schedule="* * * * * *", keep={"last": 2}, store="shared",
                       selector={"hosts": [one.id], "volumes": [vol, other_vol]})
    runs: dict[str, list[Reply]] = {name: [], other: []}
    async with asyncio.timeout(90):
        while len(runs[name]) < 8 or len(runs[other]) < 2:
            reply = msgspec.json.decode((await sub.next_msg(timeout=60)).data, type=Reply)
            for p in runs:
                if reply.caller == f"policy:{p}":
                    runs[p].append(reply)
    await policies.clean()
    assert (await coverage_of(client, one.id, vol, None)).status == "uncovered"
    assert (await coverage_of(client, one.id, other_vol, None)).status == "uncovered"
    while True:  # the runs that ended after the policies were removed
        try:
            reply = msgspec.json.decode((await sub.next_msg(timeout=1)).data, type=Reply)
        except TimeoutError:
            break
        for p in runs:
            if reply.caller == f"policy:{p}":
                runs[p].append(reply)
    await sub.unsubscribe()
    assert all(r.ok for rs in runs.values() for r in rs), [r.error for rs in runs.values() for r in rs]
    others = [r.result["backup_id"] for r in runs[other] if isinstance(r.result, dict)]
    assert len(others) == len(runs[other]) >= 2

    snaps = snapshots(entry)
    by_backup = {tags_of(s).get("backup"): s for s in snaps}
    for kept in (manual, theirs):
        assert kept["backup_id"] in by_backup, f"{kept['backup_id']} was forgotten"
    assert by_backup[theirs["backup_id"]]["hostname"] == two.id
    for made in others:  # the other policy's (keep last 100): every one
        assert made in by_backup, f"{made} of policy {other} was forgotten"
    for v in (vol, other_vol):
        mine = [s for s in snaps if tags_of(s).get("policy") == name and tags_of(s).get("volume") == v]
        assert len(mine) == 2, (v, [tags_of(s) for s in mine])  # keep last 2, per volume
        assert {s["hostname"] for s in mine} == {one.id}
    # Every snapshot left has its record, and no record names a forgotten snapshot.
    listed = [b for b in (await one.ok("backups", {}))["backups"] if b["store"] == "shared"]
    assert {b["restic"]["snapshot_id"] for b in listed} == {s["short_id"] for s in snaps}
