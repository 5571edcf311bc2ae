"""The agent decides, not only the bus: a real agent refuses what its policy does not allow, applies nothing then,
and names the caller of every outcome on `vol.res`."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from contracts import Reply
from volumectl.client import AgentClient
from volumectl.signing import Signer, new_user_seed

from .conftest import Host
from .identities import Identities
from .stack import BUSYBOX_IMAGE, Agent, Dockerd, NatsServer, venv_bin
from .test_durable import consumed, logged, next_outcome
from .test_volumectl import ctl

pytestmark = pytest.mark.integration

DAY_NS = 86400 * 10**9


def volumes(host: Host) -> list[str]:
    return host.docker.docker("volume", "ls", "-q").split()


async def durable(host: Host, signer: Signer | None, op: str, body: dict[str, object], *,
                  signed_ns: int | None = None, signed_body: bytes | None = None) -> Reply:
    """Publish a durable command as given (signed by `signer` at `signed_ns`, over `signed_body`); its outcome."""
    cmd_id = uuid.uuid4().hex
    subject, data = f"vol.cmd.{host.id}.{op}", msgspec.json.encode({**body, "id": cmd_id})
    headers = {"Nats-Msg-Id": cmd_id}
    if signer is not None:
        headers |= signer.headers(subject, signed_body or data, cmd_id, now_ns=signed_ns)
    await host.client.nc.jetstream().publish(subject, data, headers=headers)
    return await next_outcome(host.client, host.id, op, cmd_id)


async def test_unsigned_mis_signed_and_too_old_durable_commands_are_refused_and_nothing_is_applied(
    host: Host,
) -> None:
    stranger = Signer(new_user_seed())
    ops = host.client.signer
    for signer, kw, why in [
        (None, {}, "is not signed"),
        (stranger, {}, "is not in the policy file"),
        (ops, {"signed_body": b'{"name": "other"}'}, "does not match key"),
        (ops, {"signed_ns": time.time_ns() - 2 * DAY_NS}, "max_command_age_s = 86400"),
    ]:
        reply = await durable(host, signer, "create", {"name": "refused1"}, **kw)  # type: ignore[arg-type]
        assert reply.error is not None and reply.error.code == "forbidden" and why in reply.error.message, reply
    await consumed(host.client, host.id, "create")  # acked: refusals are final, never redelivered
    assert volumes(host) == []
    reply = await durable(host, ops, "create", {"name": "signed1"})
    assert reply.ok and reply.caller == "ops" and volumes(host) == ["signed1"]


async def test_stale_and_replayed_requests_are_refused(host: Host) -> None:
    assert host.client.signer is not None
    nc = host.client.nc
    subject, body = f"vol.req.{host.id}.create", b'{"name": "once1"}'
    stale = host.client.signer.headers(subject, body, now_ns=time.time_ns() - 600 * 10**9)
    reply = msgspec.json.decode((await nc.request(subject, body, timeout=10, headers=stale)).data, type=Reply)
    assert reply.error is not None and reply.error.code == "forbidden" and "max_skew_s" in reply.error.message
    assert volumes(host) == []
    headers = host.client.signer.headers(subject, body)
    first = msgspec.json.decode((await nc.request(subject, body, timeout=10, headers=headers)).data, type=Reply)
    assert first.ok
    host.docker.docker("volume", "rm", "once1")
    again = await nc.request(subject, body, timeout=10, headers=headers)
    assert again.headers is not None and again.headers["Nats-Service-Error-Code"] == "403"
    assert "a replay" in msgspec.json.decode(again.data, type=Reply).error.message  # type: ignore[union-attr]
    assert volumes(host) == []


async def test_every_outcome_on_vol_res_names_its_caller(host: Host) -> None:
    reply = await host.req("create", {"name": "audited1", "id": "audit-1"})
    assert reply.caller == "ops"
    assert (await next_outcome(host.client, host.id, "create", "audit-1")).caller == "ops"
    cmd_id = await host.client.command(host.id, "remove", {"name": "audited1"})
    removed = await next_outcome(host.client, host.id, "remove", cmd_id)
    assert removed.ok and removed.caller == "ops"  # who removed this volume


async def test_a_reader_reads_but_cannot_create_and_an_operator_of_other_hosts_is_refused(
    host: Host, identities: Identities
) -> None:
    for name, why in (("viewer", "has role reader, which may not run create"),
                      ("far", "may act only on hosts elsewhere, not on host-a")):
        c = AgentClient(host.client.nc, signer=identities.signers[name])
        reply = await c.request(host.id, "create", {"name": "nope1", "id": f"by-{name}"})
        assert reply.error is not None and reply.error.code == "forbidden" and why in reply.error.message
        assert reply.caller == name
        assert (await next_outcome(host.client, host.id, "create", f"by-{name}")).caller == name
    reader = AgentClient(host.client.nc, signer=identities.reader)
    assert (await reader.request(host.id, "list", {})).ok
    assert [r.ok for r in await reader.gather("list", window=1) if r.host == host.id] == [True]
    assert volumes(host) == []


def test_the_bind_mount_exploit_is_refused_and_a_listed_root_allows_it(host: Host, tmp_path: Path) -> None:
    """The issue's exploit through volumectl: /etc is outside bind_roots (the tests' temporary directory)."""
    out = ctl(host, "create", "hostroot", "-o", "type=none", "-o", "o=bind", "-o", "device=/etc")
    assert out.returncode == 1 and "forbidden: Volume 'hostroot' would mount the host path /etc" in out.stderr
    assert "[volumes] bind_roots" in out.stderr
    out = ctl(host, "share", "pwn", "--image", BUSYBOX_IMAGE, "-v", "hostroot:/h", "--start", "--",
              "sh", "-c", "echo x > /h/proof")
    assert out.returncode == 0  # hostroot is made a plain volume: the proof lands there, not in /etc
    assert not Path("/etc/proof").exists()
    # Made behind the agent's back, with plain docker: still not shared, nor taken with volumes_from.
    host.docker.docker("volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", "device=/etc", "etc2")
    out = ctl(host, "share", "pwn2", "--image", BUSYBOX_IMAGE, "-v", "etc2:/h")
    assert out.returncode == 1 and "Volume 'etc2' mounts the host path /etc" in out.stderr
    host.docker.docker("create", "--name", "rooty", "-v", "/etc:/host", BUSYBOX_IMAGE)
    out = ctl(host, "share", "pwn3", "--image", BUSYBOX_IMAGE, "--volumes-from", "rooty")
    assert out.returncode == 1 and "only named volumes" in out.stderr

    allowed = tmp_path / "exports"
    allowed.mkdir()
    assert ctl(host, "create", "listed", "-o", "type=none", "-o", "o=bind", "-o", f"device={allowed}").returncode == 0
    out = ctl(host, "share", "ok", "--image", BUSYBOX_IMAGE, "-v", "listed:/h", "--start", "--",
              "sh", "-c", "echo x > /h/proof")
    assert out.returncode == 0, out.stderr
    for _ in range(100):
        if (allowed / "proof").exists():
            break
        time.sleep(0.1)
    assert (allowed / "proof").read_text() == "x\n"


async def test_the_default_policy_refuses_host_paths_and_every_image(make_agent, identities: Identities) -> None:
    a = make_agent(policy=identities.write_policy("default.toml", images=()))
    c = await identities.connect([a.nats_url])
    try:
        reply = await c.request(a.host_id, "create", {"name": "hostroot", "driver_opts": {
            "type": "none", "o": "bind", "device": "/tmp"}})
        assert reply.error is not None and "(roots: none)" in reply.error.message
        reply = await c.request(a.host_id, "share", {"container": {"name": "pwn", "image": BUSYBOX_IMAGE}})
        assert reply.error is not None and "[share] images" in reply.error.message and "(allowed: none)" in \
            reply.error.message
    finally:
        await c.close()


async def test_volumectl_signs_with_its_seed_and_says_so_when_it_has_none(host: Host) -> None:
    out = ctl(host, "--json", "create", "by-cli")
    assert out.returncode == 0 and msgspec.json.decode(out.stdout)["caller"] == "ops"
    out = ctl(host, "--name", "viewer", "ls", identity="viewer")
    assert out.returncode == 0 and "by-cli" in out.stdout
    # Without a seed it is no one: the fleet's NATS does not let it in (and an agent would refuse it unsigned).
    env = {k: v for k, v in host.agent.auth.env().items() if k != "VOLUME_AGENT_SEED"}
    out = subprocess.run([venv_bin("volumectl"), "--nats", host.agent.nats_url, "--host", host.id, "rm", "by-cli"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1 and "cannot connect" in out.stderr and "Authorization Violation" in out.stderr
    assert "by-cli" in volumes(host)


def test_an_agent_without_a_usable_policy_file_does_not_start(
    dockerd: Dockerd, nats_server: NatsServer, identities: Identities, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[identity]]\nname = "x"\nkey = "not a key"\nrole = "operator"\n')
    for policy, why in ((missing, "Cannot read the policy file"), (bad, "is not valid")):
        a = Agent(f"nopolicy-{uuid.uuid4().hex[:6]}", dockerd.url, nats_server.url, tmp_path / "agent",
                  auth=identities, policy=policy).start(wait=False)
        assert a.wait(30) == 1
        assert '"agent.failed"' in a.log() and why in a.log() and str(policy) in a.log()


async def test_migrate_signs_its_peer_requests_with_the_agent_key(host: Host, make_agent) -> None:
    """The target agent is asked to restore by the source agent, which signs with its own key (role agent)."""
    target = make_agent()
    await host.ok("create", {"name": "moving"})
    out = await host.ok("migrate", {"volume": "moving", "to": target.host_id, "target": "moved"})
    assert out["target"] == "moved"  # the same dockerd stands for the other host here
    restored = await logged(target, "command.done")
    assert restored["caller"] == host.id and restored["op"] in ("restore", "digest")
    await host.ok("forget", {"backup_id": out["backup_id"]})  # the shared store is every test's
