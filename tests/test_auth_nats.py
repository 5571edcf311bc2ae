"""The generated NATS authorization on a real nats-server, with the credentials an attacker would hold.

`volume-agent auth init` makes the identities; the server includes its `nats-auth.conf`; two real agents run with
their seeds. What each identity may not do, the server refuses (the permissions violation nats-py hands to its
error callback, and no subscriber ever sees the message); what the agents need, they can do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from agent.denials import Denials, Denied
from contracts import catalog_key, inbox_prefix
from volumectl.client import AgentClient
from volumectl.signing import Signer, new_user_seed

from .stack import BUSYBOX_IMAGE, Agent, Dockerd, NatsServer, venv_bin
from .test_events import eventually

pytestmark = pytest.mark.integration

SA, SB = "sec-a", "sec-b"
DENIAL_WAIT_S = 5.0


@pytest.fixture(scope="module")
def auth(stack_dir: Path) -> Path:
    d = stack_dir / "auth"
    subprocess.run([venv_bin("volume-agent"), "auth", "init", str(d), "--host", SA, "--host", SB,
                    "--operator", "ops", "--operator", f"ops-a:{SA}", "--reader", "rd", "--admin", "adm"],
                   check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def server(stack_dir: Path, auth: Path) -> Iterator[NatsServer]:
    root = stack_dir / "nats-auth"
    root.mkdir()
    shutil.copy(auth / "nats-auth.conf", root / "nats-auth.conf")  # docs/security.md: beside the server's config
    n = NatsServer(root, config="include nats-auth.conf").start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def agents(dockerd: Dockerd, server: NatsServer, auth: Path, stack_dir: Path) -> Iterator[dict[str, Agent]]:
    dockerd.reset()
    # Each agent as `auth init` set it up: its own seed, and the policy it wrote (every identity, with its role).
    made = {h: Agent(h, dockerd.url, server.url, stack_dir / f"agent-{h}",
                     ["--ack-wait", "2", "--nats-nkey-seed", str(auth / "seeds" / f"{h}.nk"),
                      "--policy", str(auth / "policy.toml")]) for h in (SA, SB)}
    for a in made.values():
        a.start()
    yield made
    for a in made.values():
        a.stop()
    dockerd.reset()


class As:
    """A connection as one identity, and the permission violations the server reported to it."""

    def __init__(self, nc: Client, errors: list[str], signer: Signer | None = None) -> None:
        self.nc, self.errors = nc, errors
        self.client = AgentClient(nc, signer=signer)  # the same identity signs what it asks

    async def denied(self, subject: str, kind: str = "publish") -> None:
        want = f'permissions violation for {kind} to "{subject.lower()}"'

        async def reported() -> bool:
            return any(want in e for e in self.errors)

        await eventually(reported, DENIAL_WAIT_S, f"the server refused {kind} to {subject}")

    async def publish_denied(self, subject: str, data: bytes = b"{}", **kw: Any) -> None:
        await self.nc.publish(subject, data, reply=self.nc.new_inbox(), **kw)
        await self.nc.flush()
        await self.denied(subject)

    async def ok(self, host: str, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.client.request(host, op, body, timeout=60)
        assert reply.ok and reply.result is not None, reply.error
        return reply.result


async def connect(server: NatsServer, seed: Path | None, name: str, denials: Denials | None = None) -> As:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))
        if denials is not None:  # as the agent's Bus does
            denials.report(str(exc))

    kw: dict[str, Any] = {"nkeys_seed": str(seed)} if seed else {}
    nc = Client()
    try:
        await nc.connect([server.url], inbox_prefix=inbox_prefix(name), error_cb=on_error, allow_reconnect=False,
                         connect_timeout=5, max_reconnect_attempts=0, **kw)
    except BaseException:
        await nc.close()  # nats-py leaves the refused connection's socket open otherwise
        raise
    return As(nc, errors, Signer.from_file(seed) if seed else None)


@pytest_asyncio.fixture(loop_scope="session")
async def who(server: NatsServer, auth: Path, agents: dict[str, Agent]) -> AsyncIterator[Any]:
    """`await who(name)`: a connection as that identity, closed after the test."""
    made: list[As] = []

    async def make(name: str) -> As:
        made.append(await connect(server, auth / "seeds" / f"{name}.nk", name))
        return made[-1]

    yield make
    for c in made:
        await c.nc.close()


async def _spy(admin: As, subject: str) -> list[Msg]:
    """Every message published on `subject` from now on, as the admin (who may see everything) receives it."""
    seen: list[Msg] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg)

    await admin.nc.subscribe(subject, cb=keep)
    await admin.nc.flush()
    return seen


async def test_agents_work_under_their_permissions(who: Any, agents: dict[str, Agent], dockerd: Dockerd,
                                                   server: NatsServer) -> None:
    ops, rd = await who("ops"), await who("rd")
    await ops.ok(SA, "create", {"name": "sec1"})
    dockerd.docker("run", "--rm", "-v", "sec1:/d", BUSYBOX_IMAGE, "sh", "-c", "echo hello > /d/f; mkdir /d/s")
    # A durable command, and its outcome on vol.res.
    outcomes = await ops.nc.subscribe(f"vol.res.{SA}.create")
    cmd_id = await ops.client.command(SA, "create", {"name": "sec2"})
    async with asyncio.timeout(30):
        while json.loads((await outcomes.next_msg(timeout=30)).data)["id"] != cmd_id:
            pass
    # Every agent's inventory, read by a reader.

    async def both() -> bool:
        return {s.host for s in await rd.client.inventories()} == {SA, SB}

    await eventually(both, 30, "both agents' inventories")
    # The shared store: backed up on A into A's bucket, restored on A and on B; B lists it, A alone forgets it.
    rec = await ops.ok(SA, "backup", {"volume": "sec1", "store": "nats"})
    assert rec["location"] == f"nats://vol_backups_{SA}/{rec['backup_id']}"
    await ops.ok(SA, "restore", {"backup_id": rec["backup_id"], "volume": "sec1-a"})
    await ops.ok(SB, "restore", {"backup_id": rec["backup_id"], "volume": "sec1-b"})
    source = await rd.ok(SA, "digest", {"volume": "sec1"})
    assert (await rd.ok(SB, "digest", {"volume": "sec1-b"}))["sha256"] == source["sha256"]
    assert rec["backup_id"] in [b["backup_id"] for b in (await rd.ok(SB, "backups"))["backups"]]
    reply = await ops.client.request(SB, "forget", {"backup_id": rec["backup_id"]})
    assert reply.error is not None and reply.error.code == "invalid" and f"--host {SA}" in reply.error.message
    # migrate: A asks B to restore and digest.
    moved = await ops.ok(SA, "migrate", {"volume": "sec1", "to": SB, "target": "sec1-m"})
    assert moved["sha256"] == source["sha256"]
    await ops.ok(SA, "forget", {"backup_id": rec["backup_id"]})
    assert rec["backup_id"] not in [b["backup_id"] for b in (await rd.ok(SB, "backups"))["backups"]]
    await ops.ok(SA, "backup", {"volume": "sec2", "store": "nats", "keep": 1})
    await ops.ok(SA, "backup", {"volume": "sec2", "store": "nats", "keep": 1})  # keep deletes the older one
    assert ops.errors == [] and rd.errors == []
    for a in agents.values():
        assert "nats.permission_denied" not in a.log() and "stream_not_updated" not in a.log()
    assert "Violation" not in (server.root / "nats.log").read_text()


async def test_no_one_connects_without_a_known_key(server: NatsServer, tmp_path: Path,
                                                   agents: dict[str, Agent]) -> None:
    with pytest.raises(nats.errors.Error):
        await connect(server, None, "anonymous")
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_user_seed())
    stranger.chmod(0o600)
    with pytest.raises(nats.errors.Error):
        await connect(server, stranger, "stranger")


async def test_a_reader_reads_but_cannot_ask_for_changes(who: Any, dockerd: Dockerd) -> None:
    rd, adm = await who("rd"), await who("adm")
    seen = await _spy(adm, "vol.>")
    assert "volumes" in await rd.ok(SA, "list")
    await rd.publish_denied(f"vol.req.{SA}.create", b'{"name": "evil"}')
    await rd.publish_denied(f"vol.cmd.{SA}.create", b'{"name": "evil"}', headers={"Nats-Msg-Id": "evil-1"})
    await rd.publish_denied(f"vol.req.{SA}.restore", b'{"backup_id": "x", "volume": "evil"}')
    for subject in (f"vol.req.{SA}.>", "_INBOX_ops.>", "_INBOX.>"):  # snoop on requests or another's replies
        await rd.nc.subscribe(subject)
        await rd.denied(subject, "subscription")
    await adm.nc.flush()
    assert not [m.subject for m in seen if "create" in m.subject or "restore" in m.subject]
    assert "evil" not in dockerd.docker("volume", "ls", "-q").split()


async def test_an_operator_of_one_host_cannot_reach_another(who: Any, dockerd: Dockerd) -> None:
    opa, adm = await who("ops-a"), await who("adm")
    seen = await _spy(adm, f"vol.*.{SB}.>")
    await opa.ok(SA, "create", {"name": "opa-here"})
    await opa.publish_denied(f"vol.req.{SB}.create", b'{"name": "opa-there"}')
    await opa.publish_denied(f"vol.cmd.{SB}.create", b'{"name": "opa-there"}', headers={"Nats-Msg-Id": "opa-1"})
    await opa.publish_denied(f"vol.req.{SB}.remove", b'{"name": "sec1-b"}')
    await adm.nc.flush()
    assert not [m for m in seen if m.subject.startswith((f"vol.req.{SB}", f"vol.cmd.{SB}"))]
    assert "opa-there" not in dockerd.docker("volume", "ls", "-q").split()


async def test_an_agents_credentials_reach_only_its_own(who: Any) -> None:
    a, adm = await who(SA), await who("adm")
    inventory = await adm.nc.jetstream().key_value("vol_inventory")
    # Another host's requests, replies and commands.
    for subject in (f"vol.req.{SB}.>", f"vol.req.{SB}.create", f"_INBOX_{SB}.>", "vol.cmd.>"):
        await a.nc.subscribe(subject)
        await a.denied(subject, "subscription")
    # Another host's records, backups, outcomes, events; requests other than migrate's.
    for subject in (f"$KV.vol_inventory.{SB}", f"$KV.vol_outcomes.{SB}.x", f"$KV.vol_backup_catalog.{SB}.eA==",
                    f"$O.vol_backups_{SB}.C.x", f"$O.vol_backups_{SB}.M.eA==", f"vol.res.{SB}.create",
                    f"vol.inv.{SB}", f"vol.evt.{SB}.volume.created", f"vol.req.{SB}.create",
                    f"vol.req.{SB}.remove", f"vol.cmd.{SB}.create"):
        await a.publish_denied(subject, b"x")
    assert json.loads((await inventory.get(SB)).value or b"")["host"] == SB  # B's own snapshot, not our b"x"
    # Another host's durable consumer; deleting, purging or changing any stream, its own bucket's included.
    for subject in (f"$JS.API.CONSUMER.MSG.NEXT.VOL_CMD.agent_{SB}", f"$JS.API.CONSUMER.INFO.VOL_CMD.agent_{SB}",
                    f"$JS.API.CONSUMER.DELETE.VOL_CMD.agent_{SB}", f"$JS.API.CONSUMER.DELETE.VOL_CMD.agent_{SA}",
                    f"$JS.API.CONSUMER.CREATE.VOL_CMD.agent_{SA}.vol.cmd.>", "$JS.API.CONSUMER.CREATE.VOL_CMD",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.VOL_CMD.agent_{SA}", "$JS.API.STREAM.PURGE.VOL_RES",
                    "$JS.API.STREAM.DELETE.KV_vol_inventory", f"$JS.API.STREAM.DELETE.OBJ_vol_backups_{SA}",
                    f"$JS.API.STREAM.PURGE.OBJ_vol_backups_{SB}", "$JS.API.STREAM.UPDATE.VOL_CMD",
                    "$JS.API.STREAM.MSG.DELETE.VOL_RES", "$JS.API.STREAM.MSG.GET.VOL_CMD",
                    "$JS.API.DIRECT.GET.VOL_CMD"):
        await a.publish_denied(subject)
    # The one consumer it may make is its own, on its own commands: the server holds the filter to the subject's.
    for config in ({"filter_subject": "vol.cmd.>"}, {"filter_subjects": ["vol.cmd.>"]}):
        body = {"stream_name": "VOL_CMD", "config": {"name": f"agent_{SA}", "durable_name": f"agent_{SA}",
                                                     "ack_policy": "explicit", **config}}
        reply = await a.nc.request(f"$JS.API.CONSUMER.CREATE.VOL_CMD.agent_{SA}.vol.cmd.{SA}.>",
                                   json.dumps(body).encode(), timeout=5)
        assert "error" in json.loads(reply.data), reply.data
    info = await adm.nc.jetstream().consumer_info("VOL_CMD", f"agent_{SA}")
    assert info.config.filter_subject == f"vol.cmd.{SA}.>" and not info.config.filter_subjects


async def test_a_record_a_host_writes_about_another_hosts_backup_is_never_used(who: Any, dockerd: Dockerd) -> None:
    """Host B's credentials may write catalog keys under `sec-b.` only: a record there that names host A is refused,
    and one that claims A's backup id for B makes that id ambiguous (conflict), never B's data restored as A's."""
    ops, b = await who("ops"), await who(SB)
    await ops.ok(SA, "create", {"name": "forge-src"})
    rec = await ops.ok(SA, "backup", {"volume": "forge-src", "store": "nats"})
    catalog = await b.nc.jetstream().key_value("vol_backup_catalog")  # with B's own credentials

    async def forge(backup_id: str, host: str) -> None:
        forged = {**rec, "backup_id": backup_id, "host": host}
        await catalog.put(catalog_key(SB, backup_id), json.dumps(forged).encode())

    # A record under B's key naming A: not listed, not restorable.
    await forge("forge-src.20260101T000000000000Z.aaaaaa", SA)
    reply = await ops.client.request(SA, "restore", {"backup_id": "forge-src.20260101T000000000000Z.aaaaaa",
                                                     "volume": "forged"})
    assert reply.error is not None and reply.error.code == "corrupt" and "only that host" in reply.error.message
    listed = [x["backup_id"] for x in (await ops.ok(SA, "backups", {"volume": "forge-src"}))["backups"]]
    assert listed == [rec["backup_id"]]
    # The same beside A's own record of that id: A's is used.
    await forge(rec["backup_id"], SA)
    await ops.ok(SB, "restore", {"backup_id": rec["backup_id"], "volume": "forge-copy"})
    # B claiming A's id as its own: the id is ambiguous, nothing is restored.
    await forge(rec["backup_id"], SB)
    reply = await ops.client.request(SB, "restore", {"backup_id": rec["backup_id"], "volume": "forge-copy2"})
    assert reply.error is not None and reply.error.code == "conflict" and f"{SA}, {SB}" in reply.error.message
    assert "forge-copy2" not in dockerd.docker("volume", "ls", "-q").split()
    await catalog.delete(catalog_key(SB, rec["backup_id"]))
    await ops.ok(SB, "restore", {"backup_id": rec["backup_id"], "volume": "forge-copy2"})


async def test_a_refused_request_fails_when_the_server_says_so_not_at_its_timeout(server: NatsServer, auth: Path,
                                                                                  agents: dict[str, Agent]) -> None:
    """What the agent's peer requests (migrate) and stream updates rely on: a denial ends the wait."""
    denials = Denials()
    a = await connect(server, auth / "seeds" / f"{SA}.nk", SA, denials)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(Denied):
            await denials.call(f"vol.req.{SB}.remove",
                               a.client.request(SB, "remove", {"name": "sec1-b"}, timeout=60))
        assert asyncio.get_running_loop().time() - started < DENIAL_WAIT_S
        assert (await denials.call(f"vol.req.{SB}.digest", a.client.request(SB, "digest", {"volume": "nope"}))).error
    finally:
        await a.nc.close()


async def test_an_agent_that_may_not_update_a_stream_says_so_and_starts(who: Any, agents: dict[str, Agent]) -> None:
    adm = await who("adm")
    js = adm.nc.jetstream()
    cfg = (await js.stream_info("VOL_EVT")).config
    wanted = cfg.max_age
    cfg.max_age = timedelta(days=3).total_seconds()  # an admin's change the agents' config does not have
    await js.update_stream(cfg)
    try:
        agents[SB].stop()
        agents[SB].start()
        line = next(x for x in agents[SB].log().splitlines() if "nats.stream_not_updated" in x)
        assert "VOL_EVT" in line and "admin" in line
        assert (await js.stream_info("VOL_EVT")).config.max_age == cfg.max_age  # left as the admin set it
        assert "volumes" in await (await who("ops")).ok(SB, "list")
    finally:
        cfg.max_age = wanted
        with contextlib.suppress(Exception):
            await js.update_stream(cfg)


async def test_revoking_an_identity_closes_its_connections_at_the_reload(who: Any, server: NatsServer, auth: Path,
                                                                         agents: dict[str, Agent]) -> None:
    rd = await who("rd")
    assert "volumes" in await rd.ok(SA, "list")
    registry = json.loads((auth / "identities.json").read_text())
    registry["identities"] = [i for i in registry["identities"] if i["name"] != "rd"]
    (auth / "identities.json").write_text(json.dumps(registry))
    out = subprocess.run([venv_bin("volume-agent"), "auth", "init", str(auth)], check=True, capture_output=True)
    assert b"seeds/rd.nk is no identity's" in out.stdout
    shutil.copy(auth / "nats-auth.conf", server.root / "nats-auth.conf")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)  # nats-server --signal reload

    async def dropped() -> bool:
        return not rd.nc.is_connected

    await eventually(dropped, 10, "the revoked reader's connection closed")
    with pytest.raises(nats.errors.Error):
        await connect(server, auth / "seeds" / "rd.nk", "rd")
    assert "volumes" in await (await who("ops")).ok(SA, "list")  # the others go on
