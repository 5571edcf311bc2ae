"""Restore drills and the bad-backup guard through real agents (dockerd, NATS): a policy's drills recorded in the
inventory, the policies view and the metrics; `volumectl verify` once, passing and then failing on a corrupted
local backup, notified; and a policy run whose backup is under half the last one keeping every backup, saying
why, notified, until the guard is turned off.

Policies select only their test's own host and volume, and are removed (signed) after the test.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import InventorySnapshot, Reply, VerifyResult, result_as
from volumectl.client import AgentClient

from .conftest import Host
from .receiver import Receiver
from .stack import BUSYBOX_IMAGE, Agent, free_port
from .test_events import eventually, subscribe
from .test_observability import of, scrape_until
from .test_policies import Policies, S, coverage_of, made_by
from .test_volumectl import ctl

pytestmark = pytest.mark.integration



def fill(dockerd: Any, volume: str, script: str) -> None:
    dockerd.docker("run", "--rm", "--network", "none", "-v", f"{volume}:/data", BUSYBOX_IMAGE, "sh", "-c", script)


SOME_FILES = ("mkdir -p /data/d && head -c 400000 /dev/urandom > /data/d/big && "
              "for i in 1 2 3 4 5 6 7 8; do echo $i > /data/f$i; done")


async def last_verify_in_inventory(client: AgentClient, host: str, volume: str) -> Any:
    inv = result_as(await client.request(host, "inventory", {}), InventorySnapshot)
    v = next((v for v in inv.volumes if v.name == volume), None)
    return v.last_verify if v is not None else None


async def test_a_policys_drills_are_recorded_in_the_inventory_the_policies_view_and_the_metrics(
    make_agent: Any, client: AgentClient, policies: Policies, dockerd: Any
) -> None:
    port = free_port()
    agent: Agent = make_agent(extra=["--ack-wait", "2", "--metrics-listen", f"127.0.0.1:{port}"])
    vol, name = f"drilled-{uuid.uuid4().hex[:6]}", f"drilled-{uuid.uuid4().hex[:6]}"
    assert (await client.request(agent.host_id, "create", {"name": vol})).ok
    fill(dockerd, vol, SOME_FILES)
    sub = await subscribe(client, S.res(agent.host_id, "verify"))
    await policies.set(name, agent.host_id, schedule="*/2 * * * * *", verify="* * * * * *", keep={"last": 2},
                       selector={"hosts": [agent.host_id], "volumes": [vol]})
    while True:  # the first slots may come before the first backup: nothing to drill, nothing published
        reply = msgspec.json.decode((await sub.next_msg(timeout=30)).data, type=Reply)
        if reply.caller == f"policy:{name}":
            break
    await sub.unsubscribe()
    assert reply.ok, reply.error
    assert reply.id.startswith(f"verify.{name}.{vol}.")
    drilled = result_as(reply, VerifyResult)
    assert drilled.checked == ["stored bytes", "extraction", "content digest"] and drilled.files == 11

    last = await eventually(lambda: last_verify_in_inventory(client, agent.host_id, vol), 20,
                            "a drill in the inventory")
    assert last.ok and last.policy == name and last.backup_id.startswith(f"{vol}.")
    cov = await coverage_of(client, agent.host_id, vol, name)
    assert cov.last_verify is not None and cov.last_verify.ok and cov.next_verify is not None
    found = await scrape_until(port, "volume_agent_last_verify_success_timestamp_seconds", volume=vol)
    assert (of(found, "volume_agent_verifies_total", result="ok") or 0) >= 1
    out = ctl(Host(agent.host_id, dockerd, agent, client), "policy", "explain", vol)
    assert out.returncode == 0 and "last drill" in out.stdout and "passed" in out.stdout, out.stdout + out.stderr


async def test_volumectl_verify_once_passes_then_fails_on_a_corrupted_local_backup_and_is_notified(
    make_agent: Any, client: AgentClient, dockerd: Any
) -> None:
    with Receiver() as receiver:
        agent: Agent = make_agent(extra=["--ack-wait", "2", "--notify", receiver.url("/hook")])
        host = Host(agent.host_id, dockerd, agent, client)
        vol = f"checked-{uuid.uuid4().hex[:6]}"
        await host.ok("create", {"name": vol})
        fill(dockerd, vol, SOME_FILES)
        local = await host.ok("backup", {"volume": vol})
        shared = await host.ok("backup", {"volume": vol, "store": "nats"})

        for made in (local, shared):
            out = ctl(host, "verify", made["backup_id"])
            assert out.returncode == 0, out.stderr
            assert f"{made['backup_id']}: verified" in out.stdout and "content digest" in out.stdout, out.stdout

        stored = Path(local["location"])
        raw = bytearray(stored.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        stored.write_bytes(bytes(raw))
        out = ctl(host, "verify", local["backup_id"])
        assert out.returncode == 1 and out.stderr.startswith("volumectl: corrupt: "), out.stderr

        _, told = await receiver.next(timeout=30)
        assert told["type"] == "failure" and "restore drill" in told["message"]
        assert local["backup_id"] in told["message"]
        last = await last_verify_in_inventory(client, agent.host_id, vol)
        assert last is not None and not last.ok and last.backup_id == local["backup_id"]
        # The scratch copies are gone: nothing is left under the data dir's drills directory.
        assert list((agent.data_dir / "drills").iterdir()) == []

        out = ctl(host, "verify", shared["backup_id"])  # passes again: told so
        assert out.returncode == 0, out.stderr
        _, back = await receiver.next(timeout=30)
        assert back["type"] == "success" and "passed again" in back["message"]


async def test_a_run_whose_backup_is_under_half_the_last_deletes_nothing_until_the_guard_is_off(
    make_agent: Any, client: AgentClient, policies: Policies, dockerd: Any
) -> None:
    with Receiver() as receiver:
        agent: Agent = make_agent(extra=["--ack-wait", "2", "--notify", receiver.url("/hook")])
        vol, name = f"guarded-{uuid.uuid4().hex[:6]}", f"guarded-{uuid.uuid4().hex[:6]}"
        assert (await client.request(agent.host_id, "create", {"name": vol})).ok
        fill(dockerd, vol, SOME_FILES)
        selector = {"hosts": [agent.host_id], "volumes": [vol]}
        await policies.set(name, agent.host_id, schedule="* * * * * *", keep={"last": 1}, selector=selector)

        async def made(n: int) -> Any:
            backups = [b for b in await made_by(client, agent.host_id, vol) if b.policy == name]
            return backups if len(backups) >= n else None

        full = (await eventually(lambda: made(1), 30, "a first scheduled backup"))[-1]
        assert full.files == 11  # ., d, d/big, f1..f8
        fill(dockerd, vol, "rm -rf /data/*")  # a mount that failed, an accident: the volume is empty

        cov = await eventually(lambda: _status(client, agent.host_id, vol, name, "suspect"), 30, "suspect")
        assert "looks incomplete" in cov.reason and full.backup_id in cov.reason and "deleted nothing" in cov.reason
        _, told = await receiver.next(timeout=30)
        assert told["type"] == "warning" and "deleted no backup" in told["message"] and name in told["message"]
        # Two more held runs: the full backup stays, and so do the empty ones (keep last 1 deletes nothing).
        held = await eventually(lambda: made(3), 30, "three backups kept under keep last 1")
        assert full.backup_id in {b.backup_id for b in held}
        assert all(b.files == 1 for b in held if b.backup_id != full.backup_id)

        await policies.set(name, agent.host_id, schedule="* * * * * *", keep={"last": 1}, selector=selector,
                           guard=False)

        async def pruned() -> Any:
            backups = [b for b in await made_by(client, agent.host_id, vol) if b.policy == name]
            return backups if len(backups) == 1 and backups[0].backup_id != full.backup_id else None

        await eventually(pruned, 30, "retention to run once the guard is off")
        await eventually(lambda: _status(client, agent.host_id, vol, name, "ok", "running"), 30, "ok again")


async def _status(client: AgentClient, host: str, vol: str, name: str, *statuses: str) -> Any:
    cov = await coverage_of(client, host, vol, name)
    return cov if cov.status in statuses else None


@pytest.mark.parametrize("compression", ["zstd", "none"])
async def test_either_data_path_records_the_digest_of_what_it_backed_up_and_the_drill_matches_it(
    any_path_host: Host, compression: str
) -> None:
    host = any_path_host
    vol = f"either-{uuid.uuid4().hex[:6]}"
    await host.ok("create", {"name": vol})
    fill(host.docker, vol, SOME_FILES + " && ln -s f1 /data/link && ln /data/f2 /data/hard")
    made = await host.ok("backup", {"volume": vol, "compression": compression})
    now = await host.ok("digest", {"volume": vol})
    assert (made["content_digest"], made["files"]) == (now["sha256"], now["entries"])
    drilled = await host.ok("verify", {"backup_id": made["backup_id"]})
    assert drilled["content_digest"] == now["sha256"] and "content digest" in drilled["checked"]
