"""Retention and maintenance of restic repositories, with real restic (a repository directory), dockerd and NATS:
a policy's keep rules forget only its own snapshots of that volume on that host; repository maintenance (`prune`,
`check`) runs on one host per slot, fleet-wide, under a lease in NATS; a failed check is notified and in the
metrics.

Policies select only their test's own hosts and volumes, and are removed (signed) after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import Reply
from volumectl.client import AgentClient

from .conftest import Host
from .receiver import Receiver
from .restic_backends import restic_env, write_stores
from .stack import Agent, Dockerd, free_port
from .test_events import eventually, subscribe
from .test_observability import of, scrape_until
from .test_policies import Policies, S, coverage_of
from .volfiles import mountpoint

pytestmark = pytest.mark.integration



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

    # Every snapshot left has its record, and no record names a forgotten snapshot, once the last run's retention
    # (which comes after its outcome is published, and may wait for restic's lock) has ended.
    async def consistent() -> bool:  # this test's hosts' records: other tests' agents name a store "shared" too
        listed = [b for b in (await one.ok("backups", {}))["backups"]
                  if b["store"] == "shared" and b["host"] in (one.id, two.id)]
        return {b["restic"]["snapshot_id"] for b in listed} == {s["short_id"] for s in snapshots(entry)}

    await eventually(consistent, 30, "the shared store's records and snapshots agreeing")

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


def log_events(agent: Agent, event: str) -> list[dict[str, Any]]:
    out = []
    for line in agent.log().splitlines():
        if f'"event":"{event}"' in line:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


async def test_two_agents_sharing_a_repository_prune_it_one_at_a_time(
    make_agent: Any, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    """Per-second prune slots: each slot is pruned by one agent at most; the other says it skipped it, naming the
    host that holds the lease or ran the slot."""
    entry = repository(tmp_path, maintenance={"prune": "* * * * * *"})
    restic(entry, "init")  # before either agent: neither makes it
    stores_file = write_stores(tmp_path / "stores.toml", {"shared": entry})
    agents = [make_agent(extra=["--ack-wait", "2", "--stores", str(stores_file)], data_dir=tmp_path / d)
              for d in ("one", "two")]
    host = Host(agents[0].host_id, dockerd, agents[0], client)
    await host.ok("create", {"name": "pruned"})
    (mountpoint(dockerd, "pruned") / "f").write_bytes(os.urandom(200_000))
    made = await host.ok("backup", {"volume": "pruned", "store": "shared"})  # waits for the lock if need be
    await host.ok("forget", {"backup_id": made["backup_id"]})

    async def enough() -> Any:
        pruned = [e for a in agents for e in log_events(a, "repository.pruned")]
        skipped = [e for a in agents for e in log_events(a, "repository.maintenance_skipped")]
        return (pruned, skipped) if len({e["slot"] for e in pruned}) >= 4 and skipped else None

    pruned, skipped = await eventually(enough, 60, "four slots pruned, and a skip")
    slots = [e["slot"] for e in pruned]
    assert len(slots) == len(set(slots)), f"a slot pruned twice: {sorted(slots)}"
    ids = {a.host_id for a in agents}
    assert all(e["task"] == "prune" and e["store"] == "shared" for e in skipped)
    assert all(any(f"host {h} " in e["why"] for h in ids) for e in skipped), [e["why"] for e in skipped]
    assert all(e["lease_held_s"] >= e["seconds"] > 0 for e in pruned)
    # The forgotten backup's data is gone from the repository: a prune ran.
    assert "unreferenced" not in restic(entry, "check").stdout.decode()


async def test_a_failing_repository_check_is_notified_and_in_the_metrics(
    make_agent: Any, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    entry = repository(tmp_path, maintenance={"check": "*/2 * * * * *", "check_subset": "100%"})
    stores_file = write_stores(tmp_path / "stores.toml", {"checked": entry})
    port = free_port()
    with Receiver() as receiver:
        agent = make_agent(extra=["--ack-wait", "2", "--stores", str(stores_file), "--metrics-listen",
                                  f"127.0.0.1:{port}", "--notify", receiver.url("/hook")])
        host = Host(agent.host_id, dockerd, agent, client)
        await host.ok("create", {"name": "checked"})
        (mountpoint(dockerd, "checked") / "f").write_bytes(os.urandom(300_000))
        await host.ok("backup", {"volume": "checked", "store": "checked"})
        await scrape_until(port, "volume_agent_repository_check_success_timestamp_seconds", store="checked")

        packs = [p for p in Path(str(entry["repository"]), "data").rglob("*") if p.is_file()]
        assert packs
        for pack in packs:
            raw = bytearray(pack.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            os.chmod(pack, 0o600)
            pack.write_bytes(bytes(raw))

        _, told = await receiver.next(timeout=30)
        assert told["type"] == "failure" and "restic check" in told["message"], told
        assert "store 'checked'" in told["message"]
        found = await scrape_until(port, "volume_agent_repository_maintenance_total", store="checked", task="check",
                                   result="failed")
        assert (of(found, "volume_agent_repository_maintenance_total", store="checked", task="check",
                   result="failed") or 0) >= 1
        assert (of(found, "volume_agent_repository_maintenance_seconds", store="checked", task="check") or 0) > 0
        async def logged() -> list[dict[str, Any]]:
            return log_events(agent, "repository.check_failed")

        failed = await eventually(logged, 10, "the log line")
        assert failed[0]["store"] == "checked" and "lease_held_s" in failed[0]
