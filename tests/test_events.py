"""Docker events on one host: volume events from outside the agent, backup on stop, the inventory, digests,
and the shared (nats) store."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from contracts import InventorySnapshot
from volumectl.client import AgentClient

from .conftest import Host
from .identities import Identities
from .stack import BUSYBOX_IMAGE, Dockerd
from .volfiles import fill_tricky, listing, mountpoint

pytestmark = pytest.mark.integration

T = TypeVar("T")
ON_STOP = "volume-agent.backup.on-stop=true"


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10, what: str = "") -> T:
    end = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def subscribe(client: AgentClient, subject: str) -> Any:
    """A subscription the server knows of before the caller goes on (see Bus.settle for why flush is not enough)."""
    sub = await client.nc.subscribe(subject)
    await client.nc._flush_pending(force_flush=True)
    await client.nc.flush()
    return sub


async def snapshot_of(client: AgentClient, host: str) -> Any:
    return next((s for s in await client.inventories() if s.host == host), None)


async def own_backups(h: Host, volume: str | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"made_here": True}
    if volume:
        body["volume"] = volume
    return list((await h.ok("backups", body))["backups"])


async def settled(h: Host, *volumes: str) -> None:
    """Until the agent has handled every Docker event so far and finished the work they started on `volumes`.

    Two markers. The agent handles Docker's events one at a time, in order, and publishes `volume.created`
    from that loop: once a volume made now is announced, every earlier event has been handled (an on-stop
    backup one called for is scheduled). Operations on a volume queue for its lock in arrival order: an
    idempotent `create` of each volume gets it only after any backup scheduled before, pruning included.
    """
    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    created = await subscribe(h.client, f"vol.evt.{h.id}.volume.created")
    h.docker.docker("volume", "create", sentinel)
    while msgspec.json.decode((await created.next_msg(timeout=10)).data)["volume"] != sentinel:
        pass
    await created.unsubscribe()
    for v in volumes:
        spec = await h.ok("inspect", {"name": v})
        await h.ok("create", {"name": v, "driver": spec["driver"], "driver_opts": spec["options"],
                              "labels": spec["labels"]})


def run_labelled(d: Dockerd, name: str, volumes: list[str], *extra: str) -> None:
    mounts = [x for v in volumes for x in ("-v", f"{v}:/{v}")]
    d.docker("run", "-d", "--name", name, "--network", "none", "--label", ON_STOP, *extra, *mounts,
             BUSYBOX_IMAGE, "sleep", "600")


async def test_a_volume_made_outside_the_agent_is_published_and_shows_in_the_inventory(host: Host) -> None:
    sub = await subscribe(host.client, f"vol.evt.{host.id}.volume.>")
    inv = await subscribe(host.client, f"vol.inv.{host.id}")
    host.docker.docker("volume", "create", "outside1")
    evt = msgspec.json.decode((await sub.next_msg(timeout=5)).data)
    assert evt["kind"] == "volume.created" and evt["volume"] == "outside1" and "cmd_id" not in evt
    published = msgspec.json.decode((await inv.next_msg(timeout=3)).data, type=InventorySnapshot)
    assert "outside1" in [v.name for v in published.volumes]
    assert published.sizes_at is not None  # sizes were computed at start, on their own cadence
    await inv.unsubscribe()

    async def listed() -> Any:
        s = await snapshot_of(host.client, host.id)
        return s if s and "outside1" in [v.name for v in s.volumes] else None

    snap = await eventually(listed, 5, "outside1 in the KV inventory")
    assert snap.engine.version and snap.engine.api_version and snap.engine.storage_driver
    assert "local" in snap.plugins and snap.heartbeat_s > 0
    host.docker.docker("volume", "rm", "outside1")
    evt = msgspec.json.decode((await sub.next_msg(timeout=5)).data)
    assert evt["kind"] == "volume.removed" and evt["volume"] == "outside1"

    async def gone() -> Any:
        s = await snapshot_of(host.client, host.id)
        return s if s and s.seq > snap.seq and "outside1" not in [v.name for v in s.volumes] else None

    await eventually(gone, 5, "outside1 gone from the KV inventory")
    await sub.unsubscribe()


async def test_mounts_are_published_with_the_container(host: Host) -> None:
    sub = await subscribe(host.client, f"vol.evt.{host.id}.volume.mounted")
    await host.ok("create", {"name": "mnt1"})
    cid = host.docker.docker("run", "-d", "--network", "none", "-v", "mnt1:/d", BUSYBOX_IMAGE, "sleep", "60").strip()
    evt = msgspec.json.decode((await sub.next_msg(timeout=5)).data)
    assert evt["volume"] == "mnt1" and evt["container"] == cid
    await sub.unsubscribe()


async def test_a_labelled_container_that_stops_gets_exactly_one_backup(host: Host) -> None:
    await host.ok("create", {"name": "appdata"})
    (mountpoint(host.docker, "appdata") / "state.txt").write_text("before stop")
    run_labelled(host.docker, "app1", ["appdata"])
    sub = await subscribe(host.client, f"vol.evt.{host.id}.backup.completed")
    host.docker.docker("stop", "-t", "1", "app1")  # kill, die and stop: one stop
    evt = msgspec.json.decode((await sub.next_msg(timeout=10)).data)
    assert evt["volume"] == "appdata" and evt["container"] == "app1"
    await settled(host, "appdata")  # the kill and stop after the die are handled; a second backup would be done
    backups = await own_backups(host, "appdata")
    assert len(backups) == 1
    assert backups[0]["trigger"] == "on-stop" and backups[0]["container"] == "app1"
    assert backups[0]["backup_id"] == evt["backup_id"]
    restored = await host.ok("restore", {"backup_id": evt["backup_id"], "volume": "appdata-copy"})
    assert restored["size"] > 0
    assert (mountpoint(host.docker, "appdata-copy") / "state.txt").read_text() == "before stop"
    await sub.unsubscribe()


async def test_a_container_that_exits_by_itself_is_backed_up_too(host: Host) -> None:
    await host.ok("create", {"name": "jobdata"})
    sub = await subscribe(host.client, f"vol.evt.{host.id}.backup.completed")
    host.docker.docker("run", "-d", "--name", "job1", "--network", "none", "--label", ON_STOP, "-v", "jobdata:/d",
                       BUSYBOX_IMAGE, "sh", "-c", "echo done > /d/out")
    evt = msgspec.json.decode((await sub.next_msg(timeout=10)).data)
    assert evt["volume"] == "jobdata" and evt["container"] == "job1"
    await sub.unsubscribe()


async def test_a_restart_policy_brings_the_container_back_and_the_stop_is_still_backed_up_once(host: Host) -> None:
    """Its process dies under `--restart always`: one die, Docker restarts it at once, and the backup reads the
    volume while it runs again (as a request backup without stop_containers would)."""
    await host.ok("create", {"name": "loopdata"})
    run_labelled(host.docker, "looper", ["loopdata"], "--restart", "always")
    sub = await subscribe(host.client, f"vol.evt.{host.id}.backup.completed")
    pid = int(host.docker.docker("inspect", "-f", "{{.State.Pid}}", "looper"))
    os.kill(pid, signal.SIGKILL)  # not `docker kill`: Docker does not restart what it was told to stop
    evt = msgspec.json.decode((await sub.next_msg(timeout=10)).data)
    assert evt["volume"] == "loopdata"
    await settled(host, "loopdata")  # the restart's events are handled too
    assert len(await own_backups(host, "loopdata")) == 1
    assert host.docker.docker("inspect", "-f", "{{.State.Running}}", "looper").strip() == "true"
    await sub.unsubscribe()


async def test_the_agents_own_stops_trigger_nothing(host: Host) -> None:
    await host.ok("create", {"name": "selfstop"})
    run_labelled(host.docker, "app3", ["selfstop"])
    rec = await host.ok("backup", {"volume": "selfstop", "stop_containers": True})
    assert rec["stopped_containers"] == ["app3"]
    await settled(host, "selfstop")  # the die of our own stop is handled
    assert [b["trigger"] for b in await own_backups(host, "selfstop")] == ["request"]


async def test_labels_choose_the_volumes_and_options_and_bad_labels_fail_clearly(host: Host) -> None:
    for v in ("va", "vb", "vc"):
        await host.ok("create", {"name": v})
    run_labelled(host.docker, "app4", ["va", "vb", "vc"], "--label", "volume-agent.backup.volumes=va,vc",
                 "--label", "volume-agent.backup.keep=1", "--label", "volume-agent.backup.compression=gzip")
    sub = await subscribe(host.client, f"vol.evt.{host.id}.backup.completed")
    for _ in range(2):
        host.docker.docker("stop", "-t", "1", "app4")
        got = {msgspec.json.decode((await sub.next_msg(timeout=10)).data)["volume"] for _ in range(2)}
        assert got == {"va", "vc"}
        host.docker.docker("start", "app4")
    await settled(host, "va", "vb", "vc")  # the second stop's backups and their pruning are done
    for v, n in (("va", 1), ("vb", 0), ("vc", 1)):
        backups = await own_backups(host, v)
        assert len(backups) == n, (v, backups)  # keep=1 pruned the first stop's backups
        assert all(b["compression"] == "gzip" for b in backups)

    failed = await subscribe(host.client, f"vol.evt.{host.id}.backup.failed")
    await host.ok("create", {"name": "vd"})
    run_labelled(host.docker, "app5", ["vd"], "--label", "volume-agent.backup.compression=lz4")
    host.docker.docker("stop", "-t", "1", "app5")
    evt = msgspec.json.decode((await failed.next_msg(timeout=10)).data)
    assert evt["container"] == "app5" and "compression" in evt["error"]
    assert await own_backups(host, "vd") == []
    # The event loop goes on: the next stop is backed up.
    host.docker.docker("start", "app4")
    host.docker.docker("stop", "-t", "1", "app4")
    assert msgspec.json.decode((await sub.next_msg(timeout=10)).data)["volume"] in ("va", "vc")
    await sub.unsubscribe()
    await failed.unsubscribe()


async def test_digests_agree_across_data_paths_and_tell_any_change(
    dockerd: Dockerd, agent: Any, archive_agent: Any, client: AgentClient
) -> None:
    dockerd.reset()
    await client.request("host-a", "create", {"name": "dg1"})
    root = mountpoint(dockerd, "dg1")
    fill_tricky(root)
    host_path = (await client.request("host-a", "digest", {"volume": "dg1"})).result
    via_api = (await client.request("host-arch", "digest", {"volume": "dg1"})).result
    assert host_path is not None and via_api is not None
    assert host_path["sha256"] == via_api["sha256"] and host_path["entries"] > 5
    (root / "suid-tool").write_bytes(b"#!/bin/sh\n# changed\n")
    changed = (await client.request("host-a", "digest", {"volume": "dg1"})).result
    assert changed is not None and changed["sha256"] != host_path["sha256"]
    reply = await client.request("host-a", "digest", {"volume": "no-such"})
    assert reply.error is not None and reply.error.code == "not_found"
    dockerd.reset()


async def test_the_shared_store_backs_up_restores_lists_and_forgets(host: Host, identities: Identities) -> None:
    await host.ok("create", {"name": "shared1", "labels": {"tier": "gold"}})
    src = mountpoint(host.docker, "shared1")
    fill_tricky(src)
    rec = await host.ok("backup", {"volume": "shared1", "store": "nats"})
    assert rec["store"] == "nats" and rec["location"] == f"nats://vol_backups_{host.id}/{rec['backup_id']}"
    assert not list((host.agent.data_dir / "spool").glob("*")), "the spool file was left behind"
    # The object is a standard one: nats-py's own reader gets the recorded bytes.
    got = io.BytesIO()  # (read as the tests' admin: a backup's bytes are for agents, not for readers)
    admin = await identities.nats([host.agent.nats_url])
    try:
        obj = await admin.jetstream().object_store(f"vol_backups_{host.id}")
        await obj.get(rec["backup_id"], writeinto=got)
    finally:
        await admin.close()
    assert hashlib.sha256(got.getvalue()).hexdigest() == rec["sha256"]
    listed = await own_backups(host, "shared1")
    assert [b["backup_id"] for b in listed] == [rec["backup_id"]]
    out = await host.ok("restore", {"backup_id": rec["backup_id"], "volume": "shared1-copy"})
    assert out["size"] == rec["size"]
    assert listing(mountpoint(host.docker, "shared1-copy")) == listing(src)
    assert (await host.ok("inspect", {"name": "shared1-copy"}))["labels"] == {"tier": "gold"}
    snap = await host.ok("inventory")
    last = next(v for v in snap["volumes"] if v["name"] == "shared1")["last_backup"]
    assert last["backup_id"] == rec["backup_id"] and last["store"] == "nats"
    await host.ok("forget", {"backup_id": rec["backup_id"]})
    assert await own_backups(host, "shared1") == []
    code, _ = await host.error("restore", {"backup_id": rec["backup_id"], "volume": "shared1-again"})
    assert code == "not_found"


async def test_every_agent_answers_the_fleet_reads(host: Host) -> None:
    await host.ok("create", {"name": "fl1"})
    for op in ("inventory", "backups", "list"):
        replies = await host.client.gather(op, {}, window=1.5)
        mine = [r for r in replies if r.host == host.id]
        assert len(mine) == 1 and mine[0].ok, op
    inv = next(r for r in await host.client.gather("inventory", {}, window=1.5) if r.host == host.id)
    assert inv.result is not None and "fl1" in [v["name"] for v in inv.result["volumes"]]


async def test_an_on_stop_backup_cut_short_by_a_killed_agent_is_made_when_it_starts_again(
    make_agent: Any, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    a = make_agent(tmp_path / "a")
    await client.request(a.host_id, "create", {"name": "crashy"})
    (mountpoint(dockerd, "crashy") / "random.bin").write_bytes(os.urandom(150 * 1024 * 1024))
    run_labelled(dockerd, "app6", ["crashy"])
    started = await subscribe(client, f"vol.evt.{a.host_id}.backup.started")
    dockerd.docker("stop", "-t", "1", "app6")
    await started.next_msg(timeout=10)
    a.signal(9)
    a.wait()
    a.start()

    async def backed_up() -> Any:
        reply = await client.request(a.host_id, "backups", {"volume": "crashy", "made_here": True})
        return reply.result["backups"] if reply.result and reply.result["backups"] else None

    backups = await eventually(backed_up, 60, "the replayed on-stop backup")
    assert backups[0]["trigger"] == "on-stop" and backups[0]["container"] == "app6"
    await started.unsubscribe()
