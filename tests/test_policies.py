"""Backup policies through real agents: written signed to the bucket, run on schedule, retained, caught up once
after a restart, refused when anyone but an operator writes or signs them, and reported in the fleet view.

Every policy here selects only its test's own host and volumes, and is removed (signed) after the test: the
bucket is shared by every agent of the session.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import BackupPolicy, BackupRecord, BackupsResult, PoliciesResult, Reply, Subjects, result_as
from contracts.labels import SCHEDULE, SCHEDULE_KEEP
from volumectl.client import AgentClient
from volumectl.policies import PolicyRefused, read_policies, remove_policy, set_policy, sign_entry

from .conftest import Host
from .identities import Identities
from .receiver import Receiver
from .stack import BUSYBOX_IMAGE, Agent, free_port
from .test_encryption_logic import Key
from .test_events import eventually, subscribe
from .test_observability import of, scrape_until
from .test_volumectl import ctl

pytestmark = pytest.mark.integration

S = Subjects("vol")


class Policies:
    """Sets policies as the operator `ops`, and removes every one it set when the test ends."""

    def __init__(self, client: AgentClient, identities: Identities) -> None:
        self.client, self.identities, self.names = client, identities, set[str]()

    async def set(self, name: str, host: str, **kw: Any) -> BackupPolicy:
        raw = {"name": name, "selector": {"hosts": [host]}, "spread_s": 0, **kw}
        policy = msgspec.convert(raw, BackupPolicy)
        await set_policy(self.client.nc.jetstream(), S, self.identities.operator, policy)
        self.names.add(name)
        return policy

    async def clean(self) -> None:
        present = await read_policies(self.client.nc.jetstream(), S)
        for name in self.names:
            if name in present and present[name].body:
                await remove_policy(self.client.nc.jetstream(), S, self.identities.operator, name)



async def view(client: AgentClient, host: str, volume: str | None = None) -> PoliciesResult:
    reply = await client.request(host, "policies", {"volume": volume} if volume else {})
    return result_as(reply, PoliciesResult)


async def coverage_of(client: AgentClient, host: str, volume: str, policy: str | None) -> Any:
    """The agent's coverage of `volume` by `policy` (None: uncovered), once it says so."""
    async def check() -> Any:
        covs = (await view(client, host, volume)).volumes
        return next((c for c in covs if c.policy == policy), None)
    return await eventually(check, 20, f"{volume} covered by {policy} on {host}")


async def made_by(client: AgentClient, host: str, volume: str) -> list[BackupRecord]:
    reply = await client.request(host, "backups", {"volume": volume, "made_here": True})
    return result_as(reply, BackupsResult).backups


async def test_a_per_second_policy_backs_up_on_schedule_and_keeps_only_what_it_says(
    host: Host, policies: Policies
) -> None:
    vol, name = f"ticks-{uuid.uuid4().hex[:6]}", f"every-second-{uuid.uuid4().hex[:6]}"
    await host.ok("create", {"name": vol})
    sub = await subscribe(host.client, S.res(host.id, "backup"))
    await policies.set(name, host.id, schedule="* * * * * *", keep={"last": 2}, selector={"hosts": [host.id],
                                                                                          "volumes": [vol]})
    outcomes: list[Reply] = []
    async with asyncio.timeout(30):
        while len(outcomes) < 4:
            reply = msgspec.json.decode((await sub.next_msg(timeout=30)).data, type=Reply)
            if reply.caller == f"policy:{name}":
                outcomes.append(reply)
    await sub.unsubscribe()
    assert all(r.ok for r in outcomes), [r.error for r in outcomes]
    records = [result_as(r, BackupRecord) for r in outcomes]
    assert {(r.trigger, r.policy, r.volume) for r in records} == {("schedule", name, vol)}
    assert all(r.id.startswith(f"schedule.{name}.{vol}.") for r in outcomes)
    assert len({r.id for r in outcomes}) == 4  # one run per slot, never the same slot twice

    await policies.clean()
    # Uncovered, and no run of the removed policy still going (the view says `running` until it ends).
    idle = await coverage_of(host.client, host.id, vol, None)
    assert idle.status == "uncovered"
    kept = await made_by(host.client, host.id, vol)
    # keep last 2, applied after each run: exactly the two newest of this policy are left.
    assert [b.policy for b in kept] == [name, name]
    assert kept[0].created_at >= records[-1].created_at

    # The policy is gone from the bucket: `--explain-keep` says so; set again with keep last 1, the preview says
    # what its next run would forget (both: the run's own backup is the one kept), and nothing is set without --yes.
    out = ctl(host, "backups", vol, "--explain-keep")
    assert out.returncode == 0 and f"policy {name} is no longer set" in out.stdout, out.stdout + out.stderr
    out = ctl(host, "policy", "set", name, "--schedule", "* * * * * *", "--keep-last", "1", "--hosts", host.id,
              "--volumes", vol, "--dry-run")
    assert out.returncode == 0 and f"{host.id} {vol}: would forget 2 backup(s), keep 0" in out.stderr, out.stderr
    out = ctl(host, "policy", "set", name, "--schedule", "@yearly", "--keep-last", "1", "--hosts", host.id,
              "--volumes", vol)
    assert out.returncode == 1 and "pass --yes" in out.stderr
    assert name not in ctl(host, "policy", "ls").stdout
    out = ctl(host, "policy", "set", name, "--schedule", "@yearly", "--keep-last", "3", "--hosts", host.id,
              "--volumes", vol)  # keeps both and the next run's: nothing to forget, set at once
    assert out.returncode == 0, out.stderr
    policies.names.add(name)
    explained = await eventually(lambda: _explain_keep(host, vol, name), 20, "the policy back in the bucket")
    assert "last 1/3, newest" in explained and "last 2/3" in explained


async def _explain_keep(host: Host, vol: str, name: str) -> str | None:
    out = ctl(host, "backups", vol, "--explain-keep")
    return out.stdout if f"policy {name}, keep last=3" in out.stdout else None


async def test_a_run_missed_while_the_agent_was_down_runs_once_when_it_is_back(
    make_agent: Any, client: AgentClient, policies: Policies, tmp_path: Path
) -> None:
    agent: Agent = make_agent(tmp_path / "agent")
    vol, name = f"yearly-{uuid.uuid4().hex[:6]}", f"yearly-{uuid.uuid4().hex[:6]}"
    assert (await client.request(agent.host_id, "create", {"name": vol})).ok
    await policies.set(name, agent.host_id, schedule="0 0 1 1 *", keep={"yearly": 5},
                       selector={"hosts": [agent.host_id], "volumes": [vol]})
    pending = await coverage_of(client, agent.host_id, vol, name)
    assert pending.status == "pending" and pending.next_run.startswith(f"{datetime.now(UTC).year + 1}-01-01")
    agent.stop()
    # The agent was down over two new years: its last run was for 2024 (the saved state says so).
    state_file = tmp_path / "agent" / "schedule.json"
    state = json.loads(state_file.read_text())
    key = next(k for k in state if k.startswith(name))
    state[key].update(since="2023-06-01T00:00:00+00:00", last_slot="2024-01-01T00:00:00+00:00")
    state_file.write_text(json.dumps(state))
    agent.start()

    async def caught_up() -> Any:
        c = await coverage_of(client, agent.host_id, vol, name)
        return c if c.last_success else None

    done = await eventually(caught_up, 30, "the catch-up run")
    this_year = datetime.now(UTC).year
    assert done.status == "ok" and done.next_run.startswith(f"{this_year + 1}-01-01")
    made = await made_by(client, agent.host_id, vol)
    assert [(b.trigger, b.policy) for b in made] == [("schedule", name)]  # once, not once per missed slot
    assert made[0].backup_id == done.last_backup_id
    assert agent.log().count("schedule.catching_up") == 1


async def test_only_an_operator_can_change_the_fleets_policies(
    host: Host, policies: Policies, identities: Identities, nats_server: Any
) -> None:
    vol = f"guarded-{uuid.uuid4().hex[:6]}"
    await host.ok("create", {"name": vol})
    policy = msgspec.convert({"name": f"evil-{uuid.uuid4().hex[:6]}", "schedule": "* * * * * *",
                              "keep": {"last": 1}, "selector": {"hosts": [host.id], "volumes": [vol]}}, BackupPolicy)
    policies.names.add(policy.name)
    # A reader: its NATS permissions do not let it write the bucket; volumectl says which role would.
    reader = await identities.connect([nats_server.url], "viewer")
    try:
        with pytest.raises(PolicyRefused, match="role operator or admin"):
            await set_policy(reader.nc.jetstream(timeout=3), S, identities.reader, policy)
    finally:
        await reader.close()
    out = ctl(host, "policy", "set", "x", "--schedule", "@daily", "--keep-daily", "1", identity="viewer")
    assert out.returncode == 1 and "role operator or admin" in out.stderr
    # A compromised host: its agent's own credentials cannot write the bucket either.
    stolen = await identities.connect([nats_server.url], host.id)
    try:
        with pytest.raises(PolicyRefused):
            await set_policy(stolen.nc.jetstream(timeout=3), S, identities.signers[host.id], policy)
    finally:
        await stolen.close()
    # Someone who can write the bucket (here: the admin's connection) but signs with a reader's or an agent's key:
    # the agents ignore the entry, say why, and back nothing up.
    admin = await identities.nats([nats_server.url])
    try:
        kv = await admin.jetstream().key_value(S.policies_bucket)
        for who in ("viewer", host.id):
            entry = sign_entry(identities.signers[who], S, policy.name, policy)
            await kv.put(policy.name, msgspec.json.encode(entry))

            async def rejected(role: str = "reader" if who == "viewer" else "agent") -> Any:
                v = await view(host.client, host.id, vol)
                return next((r for r in v.rejected if r.name == policy.name and f"role {role}" in r.reason), None)

            why = await eventually(rejected, 20, f"the agent to ignore the entry signed by {who}")
            assert "operator or admin" in why.reason
            cov = (await view(host.client, host.id, vol)).volumes
            assert [c.status for c in cov] == ["uncovered"]
        await kv.delete(policy.name)
    finally:
        await admin.close()
    assert await made_by(host.client, host.id, vol) == []


async def test_container_labels_schedule_a_containers_volumes(host: Host) -> None:
    vol = f"labelled-{uuid.uuid4().hex[:6]}"
    cname = f"app-{uuid.uuid4().hex[:6]}"
    host.docker.docker("create", "--name", cname, "-v", f"{vol}:/data", "--label", f"{SCHEDULE}=* * * * * *",
                       "--label", f"{SCHEDULE_KEEP['last']}=1", BUSYBOX_IMAGE, "true")

    async def backed_up() -> Any:
        made = await made_by(host.client, host.id, vol)
        return made if made and all(b.policy == f"container:{cname}" for b in made) else None

    made = await eventually(backed_up, 20, "a backup on the container's schedule")
    assert made[0].trigger == "schedule"
    views = {v.policy.name: v for v in (await view(host.client, host.id, vol)).policies}
    assert views[f"container:{cname}"].source == "labels"
    host.docker.docker("rm", cname)
    await coverage_of(host.client, host.id, vol, None)


async def test_the_fleet_view_lists_uncovered_and_failing_volumes_with_why_and_explain_says_when(
    host: Host, policies: Policies
) -> None:
    covered, bare, broken = (f"{n}-{uuid.uuid4().hex[:6]}" for n in ("covered", "bare", "broken"))
    for v in (covered, bare, broken):
        await host.ok("create", {"name": v})
    # A backup of `broken` fails: the container using it has a pre-backup hook that fails.
    host.docker.docker("run", "-d", "--name", f"user-{broken}", "-v", f"{broken}:/data",
                       "--label", "volume-agent.backup.exec-pre=exit 3", BUSYBOX_IMAGE, "sleep", "600")
    await policies.set(f"p-{covered}", host.id, schedule="0 3 * * *", keep={"daily": 7},
                       selector={"hosts": [host.id], "volumes": [covered]})
    await policies.set(f"p-{broken}", host.id, schedule="* * * * * *", keep={"last": 1},
                       selector={"hosts": [host.id], "volumes": [broken]})

    async def failing() -> Any:
        c = await coverage_of(host.client, host.id, broken, f"p-{broken}")
        return c if c.status == "failing" else None

    await eventually(failing, 20, "the failing scheduled backup")

    async def fleet() -> Any:
        out = ctl(host, "fleet", "--unprotected")
        rows = {line.split()[2]: line for line in out.stdout.splitlines()[1:] if line.split()[0] == host.id}
        return (out, rows) if broken in rows and "failing" in rows[broken] and bare in rows else None

    out, rows = await eventually(fleet, 20, "the inventory to say what is at risk")
    assert out.returncode == 3
    assert "uncovered" in rows[bare] and "exit" in rows[broken].lower()
    assert covered not in rows  # covered and pending: not at risk yet
    explained = ctl(host, "policy", "explain", covered)
    assert explained.returncode == 0, explained.stderr
    assert f"policy p-{covered}: pending" in explained.stdout and "03:00:00" in explained.stdout
    assert "daily 7" in explained.stdout
    ls = ctl(host, "policy", "ls")
    assert f"p-{covered}" in ls.stdout and "0 3 * * *" in ls.stdout
    shown = json.loads(ctl(host, "policy", "show", f"p-{covered}").stdout)
    assert shown["policy"]["schedule"] == "0 3 * * *" and shown["signed_by"] == host.agent.auth.operator.public_key
    host.docker.docker("rm", "-f", f"user-{broken}")


def test_volumectl_refuses_a_bad_policy_whole_and_writes_nothing(host: Host) -> None:
    out = ctl(host, "policy", "set", "bad", "--schedule", "61 * * * *", "--keep-daily", "0", "--store", "local",
              "--encrypt-to", "age1notakey")
    assert out.returncode == 1
    assert "not valid" in out.stderr and "age1notakey" in out.stderr
    assert "bad" not in ctl(host, "policy", "ls").stdout.split()


async def test_a_failing_policy_is_told_once_then_overdue_then_recovered_and_its_metrics_scraped(
    make_agent: Any, client: AgentClient, policies: Policies, dockerd: Any
) -> None:
    port = free_port()
    with Receiver() as receiver:
        agent: Agent = make_agent(extra=["--ack-wait", "2", "--notify", receiver.url("/hook"),
                                         "--metrics-listen", f"127.0.0.1:{port}"])
        vol, name = f"shaky-{uuid.uuid4().hex[:6]}", f"shaky-{uuid.uuid4().hex[:6]}"
        assert (await client.request(agent.host_id, "create", {"name": vol})).ok
        assert (await client.request(agent.host_id, "create", {"name": f"bare-{vol}"})).ok
        dockerd.docker("run", "-d", "--name", f"user-{vol}", "--network", "none", "-v", f"{vol}:/data",
                       "--label", "volume-agent.backup.exec-pre=echo cannot dump; exit 3", BUSYBOX_IMAGE,
                       "sleep", "600")
        await policies.set(name, agent.host_id, schedule="* * * * * *", keep={"last": 1},
                           selector={"hosts": [agent.host_id], "volumes": [vol]})
        _, failed = await receiver.next(timeout=30)
        assert failed["type"] == "failure" and name in failed["message"] and "exit 3" in failed["message"]
        _, late = await receiver.next(timeout=30)  # the next failures are not told again; overdue is, once
        assert late["type"] == "warning" and "overdue" in late["message"] and name in late["message"]

        found = await scrape_until(port, "volume_agent_policy_volumes", policy=name)
        assert of(found, "volume_agent_policy_volumes", policy=name) == 1
        assert of(found, "volume_agent_uncovered_volumes") == 1  # bare-<vol>
        nxt = of(found, "volume_agent_next_backup_timestamp_seconds", policy=name, volume=vol)
        assert nxt is not None and abs(nxt - time.time()) < 30
        assert (of(found, "volume_agent_backups_total", trigger="schedule", result="failed") or 0) >= 1

        dockerd.docker("rm", "-f", f"user-{vol}")
        _, back = await receiver.next(timeout=30)
        assert back["type"] == "success" and vol in back["message"] and name in back["message"]
        ok = await coverage_of(client, agent.host_id, vol, name)
        assert ok.status in ("ok", "running") and ok.last_success is not None


async def test_a_policy_with_recipients_makes_encrypted_backups_a_key_holder_restores(
    make_agent: Any, client: AgentClient, policies: Policies, tmp_path: Path
) -> None:
    key = Key.make(tmp_path / "k.txt")
    agent: Agent = make_agent(tmp_path / "agent", ["--ack-wait", "2", "--age-identity", str(key.path)])
    vol, name = f"sealed-{uuid.uuid4().hex[:6]}", f"sealed-{uuid.uuid4().hex[:6]}"
    assert (await client.request(agent.host_id, "create", {"name": vol})).ok
    await policies.set(name, agent.host_id, schedule="* * * * * *", keep={"last": 1}, encrypt_to=[key.recipient],
                       selector={"hosts": [agent.host_id], "volumes": [vol]})

    async def sealed() -> Any:
        made = await made_by(client, agent.host_id, vol)
        return made[0] if made else None

    record = await eventually(sealed, 20, "an encrypted scheduled backup")
    assert record.encrypted_to == [key.recipient] and record.policy == name
    assert Path(record.location).read_bytes().startswith(b"age-encryption.org/v1\n")
    await policies.clean()
    await coverage_of(client, agent.host_id, vol, None)
    restored = await client.request(agent.host_id, "restore", {"backup_id": record.backup_id,
                                                               "volume": f"{vol}-back"}, timeout=60)
    assert restored.ok, restored.error
