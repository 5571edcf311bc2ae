"""Two hosts and a three-node JetStream cluster: two private dockerd daemons stand for two machines, one agent
each, every agent given all three NATS nodes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from .conftest import Host
from .identities import Identities
from .stack import BUSYBOX_IMAGE, Agent, Dockerd, NatsCluster
from .test_events import ON_STOP, eventually, snapshot_of, subscribe
from .volfiles import fill_tricky, listing, mountpoint

pytestmark = pytest.mark.integration

A, B = "fleet-a", "fleet-b"


@pytest.fixture(scope="module")
def cluster(stack_dir: Path, identities: Identities) -> Iterator[NatsCluster]:
    yield from identities.running(NatsCluster(stack_dir / "cluster"))


def _host_docker(root: Path) -> Iterator[Dockerd]:
    d = Dockerd(root).start()
    d.import_busybox()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def docker_a(stack_dir: Path) -> Iterator[Dockerd]:
    yield from _host_docker(stack_dir / "dka")


@pytest.fixture(scope="module")
def docker_b(stack_dir: Path) -> Iterator[Dockerd]:
    yield from _host_docker(stack_dir / "dkb")


def _agent(host: str, d: Dockerd, cluster: NatsCluster, root: Path, identities: Identities) -> Agent:
    a = Agent(host, d.url, ",".join(cluster.urls), root / f"agent-{host}", ["--replicas", "3", "--heartbeat", "5"],
              auth=identities)
    a.start(wait=False)
    a.wait_ready(90)  # the cluster elects its JetStream leader in its own time
    return a


@pytest.fixture(scope="module")
def agents(
    cluster: NatsCluster, docker_a: Dockerd, docker_b: Dockerd, stack_dir: Path, identities: Identities
) -> Iterator[dict[str, Agent]]:
    for h in (A, B):  # both keys in the policy before either starts: each restores the other's backups (migrate)
        identities.agent(h)
    made = {h: _agent(h, d, cluster, stack_dir, identities) for h, d in ((A, docker_a), (B, docker_b))}
    yield made
    for a in made.values():
        a.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(agents: dict[str, Agent], cluster: NatsCluster, docker_a: Dockerd,
                docker_b: Dockerd, identities: Identities) -> AsyncIterator[dict[str, Host]]:
    docker_a.reset()
    docker_b.reset()
    client = await identities.connect(cluster.urls)
    yield {A: Host(A, docker_a, agents[A], client), B: Host(B, docker_b, agents[B], client)}
    await client.close()


async def test_a_backup_on_stop_on_one_host_restores_on_the_other_by_id_alone(fleet: dict[str, Host]) -> None:
    a, b = fleet[A], fleet[B]
    await a.ok("create", {"name": "orders", "labels": {"app": "shop"}})
    src = mountpoint(a.docker, "orders")
    fill_tricky(src)
    a.docker.docker("run", "-d", "--name", "shop", "--network", "none", "--label", ON_STOP, "--label",
                    "volume-agent.backup.store=nats", "-v", "orders:/data", BUSYBOX_IMAGE, "sleep", "600")
    done = await subscribe(a.client, f"vol.evt.{A}.backup.completed")
    a.docker.docker("stop", "-t", "1", "shop")
    backup_id = msgspec.json.decode((await done.next_msg(timeout=20)).data)["backup_id"]
    await done.unsubscribe()

    listed = (await b.ok("backups", {"volume": "orders"}))["backups"]
    assert [(r["backup_id"], r["host"], r["trigger"], r["container"]) for r in listed] == [
        (backup_id, A, "on-stop", "shop")]
    out = await b.ok("restore", {"backup_id": backup_id, "volume": "orders"})
    assert out["created_volume"] is True
    assert listing(mountpoint(b.docker, "orders")) == listing(src)
    assert (await b.ok("inspect", {"name": "orders"}))["labels"] == {"app": "shop"}
    assert (await b.ok("digest", {"volume": "orders"}))["sha256"] == (await a.ok("digest", {"volume": "orders"}))[
        "sha256"]


async def test_both_inventories_are_in_the_bucket_and_every_agent_answers_fleet_reads(
    fleet: dict[str, Host],
) -> None:
    a, b = fleet[A], fleet[B]
    await a.ok("create", {"name": "only-on-a"})
    await b.ok("create", {"name": "only-on-b"})

    async def both() -> Any:
        sa, sb = await snapshot_of(a.client, A), await snapshot_of(a.client, B)
        ok = sa and sb and [v.name for v in sa.volumes] == ["only-on-a"] and [v.name for v in sb.volumes] == [
            "only-on-b"]
        return (sa, sb) if ok else None

    sa, sb = await eventually(both, 10, "both hosts' volumes in the KV inventory")
    assert sa.engine.api_version and sb.engine.api_version

    async def heartbeat() -> Any:  # nothing changes on B: its next snapshot comes from the 5 s heartbeat
        s = await snapshot_of(a.client, B)
        return s if s and s.seq > sb.seq else None

    assert (await eventually(heartbeat, 8, "B's heartbeat snapshot")).volumes == sb.volumes
    for op in ("list", "inventory", "backups"):
        replies = await a.client.gather(op, {"made_here": True} if op == "backups" else {}, window=2)
        assert {r.host for r in replies} >= {A, B} and all(r.ok for r in replies), op


async def test_volumectl_fleet_shows_every_host_and_the_unprotected_volumes(
    fleet: dict[str, Host], cluster: NatsCluster, identities: Identities
) -> None:
    a, b = fleet[A], fleet[B]
    await a.ok("create", {"name": "guarded"})
    await a.ok("backup", {"volume": "guarded"})
    await b.ok("create", {"name": "naked"})

    async def settled() -> Any:
        sa, sb = await snapshot_of(a.client, A), await snapshot_of(a.client, B)
        return sa and sb and any(v.last_backup for v in sa.volumes) and [v.name for v in sb.volumes] == ["naked"]

    await eventually(settled, 10, "the snapshots after the backup")

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "volumectl", "--nats", ",".join(cluster.urls), *args],
                              capture_output=True, text=True, timeout=60, check=False, env=identities.env())

    out = ctl("fleet")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["HOST", "AGE", "VOLUME", "USED", "BY", "LAST", "BACKUP"]
    guarded = next(line for line in lines if " guarded " in line)
    assert guarded.startswith(A) and "ago (local)" in guarded
    assert "never" in next(line for line in lines if " naked " in line)
    # No policy covers either: both at risk; only `naked` has no backup in the last hour.
    out = ctl("fleet", "--unprotected", "1")
    assert out.returncode == 3
    rows = {line.split()[2]: line for line in out.stdout.splitlines()[1:]}
    assert sorted(rows) == ["guarded", "naked"]
    assert "uncovered" in rows["guarded"] and "no backup in the last 1 h" not in rows["guarded"]
    assert "no backup in the last 1 h" in rows["naked"]
    out = ctl("--json", "fleet", "--unprotected", "1")
    assert sorted(r["volume"] for r in json.loads(out.stdout)) == ["guarded", "naked"]


async def test_migrate_moves_a_volume_verified_and_only_then_removes_the_source(fleet: dict[str, Host]) -> None:
    a, b = fleet[A], fleet[B]
    await a.ok("create", {"name": "pgdata", "labels": {"db": "pg"}})
    src = mountpoint(a.docker, "pgdata")
    fill_tricky(src)
    before = listing(src)
    moved = await a.ok("migrate", {"volume": "pgdata", "to": B, "remove_source": True})
    assert moved["to"] == B and moved["target"] == "pgdata" and moved["source_removed"] is True
    assert moved["created_volume"] is True
    assert listing(mountpoint(b.docker, "pgdata")) == before
    assert (await b.ok("digest", {"volume": "pgdata"}))["sha256"] == moved["sha256"]
    code, _ = await a.error("inspect", {"name": "pgdata"})
    assert code == "not_found"


async def test_a_failed_migration_leaves_the_source_intact_and_names_the_step(fleet: dict[str, Host]) -> None:
    a, b = fleet[A], fleet[B]
    await a.ok("create", {"name": "keepme"})
    (mountpoint(a.docker, "keepme") / "f").write_text("precious")
    # The target exists on B with other content: the restore step refuses it.
    await b.ok("create", {"name": "keepme"})
    (mountpoint(b.docker, "keepme") / "other").write_text("b's own")
    code, msg = await a.error("migrate", {"volume": "keepme", "to": B, "remove_source": True})
    assert code == "conflict" and "step restore" in msg and f"host {B}" in msg and "source is intact" in msg
    assert (mountpoint(a.docker, "keepme") / "f").read_text() == "precious"
    assert (mountpoint(b.docker, "keepme") / "other").read_text() == "b's own"

    code, msg = await a.error("migrate", {"volume": "keepme", "to": "nobody-here", "target": "elsewhere"})
    assert code == "unavailable" and "step restore" in msg
    a.docker.docker("run", "-d", "--name", "busy", "--network", "none", "-v", "keepme:/d", BUSYBOX_IMAGE, "sleep",
                    "600")
    code, msg = await a.error("migrate", {"volume": "keepme", "to": B, "target": "keepme2"})
    assert code == "in_use" and "step check" in msg and "busy" in msg
    code, _ = await a.error("migrate", {"volume": "keepme", "to": A})
    assert code == "invalid"
    assert (mountpoint(a.docker, "keepme") / "f").read_text() == "precious"


async def test_after_a_dockerd_restart_stops_still_trigger_backups_and_the_inventory_follows(
    fleet: dict[str, Host],
) -> None:
    a = fleet[A]
    await a.ok("create", {"name": "survivor"})
    a.docker.stop()
    a.docker.start()
    a.docker.docker("volume", "create", "made-after-restart")

    async def seen() -> Any:
        s = await snapshot_of(a.client, A)
        return s if s and "made-after-restart" in [v.name for v in s.volumes] else None

    await eventually(seen, 20, "the volume made after the restart in the inventory")
    a.docker.docker("run", "-d", "--name", "again", "--network", "none", "--label", ON_STOP, "-v", "survivor:/d",
                    BUSYBOX_IMAGE, "sleep", "600")
    done = await subscribe(a.client, f"vol.evt.{A}.backup.completed")
    a.docker.docker("stop", "-t", "1", "again")
    evt = msgspec.json.decode((await done.next_msg(timeout=20)).data)
    assert evt["volume"] == "survivor" and evt["container"] == "again"
    await done.unsubscribe()
    assert '"events.ended"' in a.agent.log() or '"events.failed"' in a.agent.log()


def _connected_node(agent: Agent, cluster: NatsCluster) -> int:
    """The node the agent is connected to now: the last `nats.connected`/`nats.reconnected` in its log."""
    url = None
    for line in agent.log().splitlines():
        if '"nats.connected"' in line or '"nats.reconnected"' in line:
            url = json.loads(line).get("url")
    assert url is not None
    return next(i for i, u in enumerate(cluster.urls) if u.rsplit(":", 1)[1] == url.rsplit(":", 1)[1])


async def test_with_one_nats_node_killed_the_agents_keep_answering(
    fleet: dict[str, Host], cluster: NatsCluster, identities: Identities
) -> None:
    a = fleet[A]
    victim = _connected_node(a.agent, cluster)
    survivor = next(i for i in range(cluster.size) if i != victim)
    client = await identities.connect([cluster.urls[survivor]])
    try:
        cluster.kill_node(victim)
        await asyncio.sleep(1)

        async def answers() -> Any:
            try:
                ra = await client.request(A, "create", {"name": "after-kill"}, timeout=5)
                rb = await client.request(B, "inventory", {}, timeout=5)
            except Exception:  # still reconnecting
                return None
            return ra.ok and rb.ok

        await eventually(answers, 30, "answers from both agents with a node down")
        # JetStream keeps its quorum (2 of 3): durable commands and the shared store still work.
        cmd_id = await client.command(A, "create", {"name": "durable-after-kill"})

        async def created() -> Any:
            return (await client.request(A, "inspect", {"name": "durable-after-kill"}, timeout=5)).ok

        await eventually(created, 45, f"durable command {cmd_id}")  # an election, under two workers' load
        rec = await client.request(A, "backup", {"volume": "after-kill", "store": "nats"}, timeout=60)
        assert rec.ok, rec.error
        restored = await client.request(B, "restore", {"backup_id": rec.result["backup_id"],  # type: ignore[index]
                                                       "volume": "after-kill"}, timeout=60)
        assert restored.ok, restored.error
    finally:
        await client.close()
        cluster.start_node(victim)
