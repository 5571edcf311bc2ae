"""Consistency and faults around backups: stopped containers, hooks, a full disk, a killed agent, events."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from volumectl.client import AgentClient

from .conftest import Host
from .stack import BUSYBOX_IMAGE, Dockerd
from .test_durable import next_outcome
from .volfiles import mountpoint

pytestmark = pytest.mark.integration


def state(d: Dockerd, name: str) -> str:
    return d.docker("inspect", "-f", "{{.State.Status}}", name).strip()


async def test_stop_containers_stops_users_for_the_backup_and_starts_them_again(host: Host) -> None:
    await host.ok("create", {"name": "db1"})
    host.docker.docker("run", "-d", "--name", "dbserver", "--network", "none", "-v", "db1:/data", BUSYBOX_IMAGE,
                       "sleep", "600")
    rec = await host.ok("backup", {"volume": "db1", "stop_containers": True})
    assert rec["stopped_containers"] == ["dbserver"]
    assert state(host.docker, "dbserver") == "running"


async def test_hooks_run_inside_the_container_before_and_after(host: Host) -> None:
    await host.ok("create", {"name": "hooked"})
    host.docker.docker(
        "run", "-d", "--name", "hookbox", "--network", "none", "-v", "hooked:/data",
        "--label", "volume-agent.backup.exec-pre=echo dumped > /data/dump.sql",
        "--label", "volume-agent.backup.exec-post=rm /data/dump.sql",
        BUSYBOX_IMAGE, "sleep", "600")
    rec = await host.ok("backup", {"volume": "hooked", "compression": "none"})
    listed = subprocess.run(["tar", "-tf", rec["location"]], capture_output=True, text=True, check=True).stdout
    assert "./dump.sql" in listed.splitlines()
    assert not (mountpoint(host.docker, "hooked") / "dump.sql").exists()  # the post hook cleaned up


async def test_a_failing_pre_hook_aborts_the_backup_with_a_clear_error(host: Host) -> None:
    await host.ok("create", {"name": "hookfail"})
    host.docker.docker("run", "-d", "--name", "failbox", "--network", "none", "-v", "hookfail:/data",
                       "--label", "volume-agent.backup.exec-pre=echo cannot dump; exit 3",
                       BUSYBOX_IMAGE, "sleep", "600")
    code, msg = await host.error("backup", {"volume": "hookfail"})
    assert code == "conflict" and "failbox" in msg and "exit 3" in msg and "cannot dump" in msg
    assert (await host.ok("backups", {"volume": "hookfail"}))["backups"] == []


async def test_hook_labels_inherited_from_the_image_are_ignored(host: Host) -> None:
    host.docker.docker("commit", "--change", 'LABEL volume-agent.backup.exec-pre="touch /data/pwned"',
                       host.docker.docker("create", "--network", "none", BUSYBOX_IMAGE).strip(), "test/evil:1")
    await host.ok("create", {"name": "victim"})
    host.docker.docker("run", "-d", "--name", "evil", "--network", "none", "-v", "victim:/data", "test/evil:1",
                       "sleep", "600")
    await host.ok("backup", {"volume": "victim"})
    assert not (mountpoint(host.docker, "victim") / "pwned").exists()


async def test_events_tell_the_backup_from_start_to_completion(host: Host) -> None:
    sub = await host.client.nc.subscribe(f"vol.evt.{host.id}.backup.>")
    await host.ok("create", {"name": "ev2"})
    rec = await host.ok("backup", {"volume": "ev2"})
    kinds = []
    while True:
        msg = await sub.next_msg(timeout=5)
        evt = msgspec.json.decode(msg.data)
        kinds.append(evt["kind"])
        if evt["kind"] == "backup.completed":
            assert evt["backup_id"] == rec["backup_id"] and evt["bytes_done"] == rec["size"]
            break
    await sub.unsubscribe()
    assert kinds[0] == "backup.started"


@pytest.fixture
def tiny_store(tmp_path: Path):
    """A data dir on a 4 MiB tmpfs: the store fills up for real."""
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], check=True)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


async def test_a_full_disk_fails_clearly_removes_the_partial_file_restarts_containers_and_removes_nothing(
    tiny_store: Path, make_agent, dockerd: Dockerd, client: AgentClient
) -> None:
    tiny = make_agent(tiny_store).host_id
    await client.request(tiny, "create", {"name": "big1"})
    (mountpoint(dockerd, "big1") / "random.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    dockerd.docker("run", "-d", "--name", "bigapp", "--network", "none", "-v", "big1:/d", BUSYBOX_IMAGE,
                   "sleep", "600")
    reply = await client.request(tiny, "backup", {"volume": "big1", "stop_containers": True})
    assert reply.error is not None and reply.error.code == "unavailable"
    assert "full" in reply.error.message
    assert state(dockerd, "bigapp") == "running"
    assert [p for p in (tiny_store / "backups").rglob("*") if p.is_file()] == []
    dockerd.docker("rm", "-f", "bigapp")
    reply = await client.request(tiny, "remove", {"name": "big1", "backup_first": True})
    assert reply.error is not None and reply.error.code == "unavailable"
    assert "big1" in dockerd.docker("volume", "ls", "-q").split()


async def test_agent_killed_mid_backup_leaves_no_visible_backup_and_cleans_up_at_start(
    make_agent, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    a = make_agent(tmp_path)
    await client.request(a.host_id, "create", {"name": "slow1"})
    (mountpoint(dockerd, "slow1") / "random.bin").write_bytes(os.urandom(200 * 1024 * 1024))
    progress = await client.nc.subscribe(f"vol.evt.{a.host_id}.backup.progress")
    pending = asyncio.create_task(client.request(a.host_id, "backup", {"volume": "slow1",
                                                                       "compression": "gzip"}, timeout=60))
    # Under way (its first progress event): meanwhile the agent answers other requests promptly.
    evt = msgspec.json.decode((await progress.next_msg(timeout=10)).data)
    assert evt["volume"] == "slow1" and evt["bytes_done"] > 0
    await progress.unsubscribe()
    t = time.monotonic()
    assert (await client.request(a.host_id, "inspect", {"name": "slow1"}, timeout=5)).ok
    assert time.monotonic() - t < 1.0
    partials = list((tmp_path / "backups").rglob("*.partial"))
    assert partials, "the backup was not under way"
    a.signal(signal.SIGKILL)
    a.wait(10)
    pending.cancel()
    assert (await asyncio.gather(pending, return_exceptions=True))[0] is not None
    a.start()
    assert list((tmp_path / "backups").rglob("*.partial")) == []
    listed = await client.request(a.host_id, "backups", {"volume": "slow1"})
    assert listed.ok and listed.result == {"backups": []}
    assert dockerd.docker("ps", "-aq", "--filter", "label=volume-agent.helper") == ""


async def test_the_catalog_survives_an_agent_restart(make_agent, client: AgentClient) -> None:
    a = make_agent()
    await client.request(a.host_id, "create", {"name": "kept1"})
    made = await client.request(a.host_id, "backup", {"volume": "kept1"})
    a.stop()
    a.start()
    # This host's own: the shared store lists every host's, and other tests' agents write there too.
    listed = await client.request(a.host_id, "backups", {"made_here": True})
    assert [b["backup_id"] for b in listed.result["backups"]] == [made.result["backup_id"]]


async def test_a_volume_mounted_on_demand_is_backed_up_through_its_running_user(host: Host) -> None:
    """A tmpfs volume holds data only while mounted: the archive API of the container using it reads it."""
    await host.ok("create", {"name": "scratch1", "driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "size=8m"}})
    host.docker.docker("run", "-d", "--name", "tmpuser", "--network", "none", "-v", "scratch1:/work", BUSYBOX_IMAGE,
                       "sh", "-c", "echo in-memory > /work/state.txt && sleep 600")
    for _ in range(50):
        if "state.txt" in host.docker.docker("exec", "tmpuser", "ls", "/work"):
            break
        await asyncio.sleep(0.1)
    rec = await host.ok("backup", {"volume": "scratch1", "compression": "none"})
    listed = subprocess.run(["tar", "-tf", rec["location"]], capture_output=True, text=True, check=True).stdout
    assert "./state.txt" in listed.splitlines()
    await host.ok("restore", {"backup_id": rec["backup_id"], "volume": "ondisk1", "driver_opts": {}})
    assert (mountpoint(host.docker, "ondisk1") / "state.txt").read_text() == "in-memory\n"


async def test_a_durable_restore_cut_off_by_a_crash_is_undone_and_done_again_when_redelivered(
    make_agent, dockerd: Dockerd, client: AgentClient, tmp_path: Path
) -> None:
    a = make_agent(tmp_path)
    await client.request(a.host_id, "create", {"name": "big2"})
    (mountpoint(dockerd, "big2") / "random.bin").write_bytes(os.urandom(150 * 1024 * 1024))
    (mountpoint(dockerd, "big2") / "small.txt").write_text("last\n")
    made = await client.request(a.host_id, "backup", {"volume": "big2", "compression": "none"}, timeout=60)
    assert made.ok, made.error
    cmd_id = await client.command(a.host_id, "restore", {"backup_id": made.result["backup_id"], "volume": "copy2"})
    note = tmp_path / "restoring" / "copy2.json"
    for _ in range(3000):  # the note is written just before the first byte goes into the target
        if note.exists():
            break
        await asyncio.sleep(0.01)
    assert note.exists(), "the restore was not under way"
    a.signal(signal.SIGKILL)
    a.wait(10)
    cut_off = "result" not in msgspec.json.decode(note.read_bytes())  # else it finished just before the kill
    a.start()
    # Delivered again after the ack wait: the half-written target is undone, then restored whole (or, had it
    # finished, answered with its result).
    reply = await next_outcome(client, a.host_id, "restore", cmd_id, timeout=60)
    assert reply.ok, reply.error
    assert reply.result["created_volume"] is True
    src = await client.request(a.host_id, "digest", {"volume": "big2"}, timeout=60)
    copy = await client.request(a.host_id, "digest", {"volume": "copy2"}, timeout=60)
    assert src.result["sha256"] == copy.result["sha256"]
    assert ('"restore.undoing_interrupted"' if cut_off else '"restore.already_done"') in a.log()
    assert "result" in msgspec.json.decode(note.read_bytes())  # kept for a redelivery, until another restore
