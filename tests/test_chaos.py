"""Faults together, not one at a time: two hosts, a three-node cluster, one agent per host (--replicas 3), a mixed
durable workload (creates, backups to both stores, restores) while agents are SIGKILLed, NATS nodes SIGKILLed and
dockerd restarted, at random from a fixed seed. Then every command must have exactly one final outcome on
`vol.res`, and the hosts must agree with it.

`-m "not chaos"` leaves it out (it takes about a minute). CHAOS_SEED=N runs another fixed sequence.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client

from contracts import Reply
from volumectl.client import AgentClient
from volumectl.signing import Signer

from .identities import Identities
from .stack import Agent, Dockerd, NatsCluster
from .volfiles import mountpoint

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300)]

SEED = int(os.environ.get("CHAOS_SEED", "20261129"))
CHAOS_S = 35.0
SETTLE_S = 90.0
A, B = "chaos-a", "chaos-b"
HOSTS = (A, B)
SOURCES = 2  # source volumes per host; never written after the start, so every backup of one has its digest


@pytest.fixture(scope="module")
def cluster(stack_dir: Path, identities: Identities) -> Iterator[NatsCluster]:
    yield from identities.running(NatsCluster(stack_dir / "chaos-nats"))


@pytest.fixture(scope="module")
def dockers(stack_dir: Path) -> Iterator[dict[str, Dockerd]]:
    made = {h: Dockerd(stack_dir / f"chaos-{h[-1]}").start() for h in HOSTS}
    yield made
    for d in made.values():
        d.stop()


@pytest.fixture(scope="module")
def agents(
    cluster: NatsCluster, dockers: dict[str, Dockerd], stack_dir: Path, identities: Identities
) -> Iterator[dict[str, Agent]]:
    # A short ack wait: a command whose agent was killed comes again within seconds, not the default 30 s.
    extra = ["--replicas", "3", "--ack-wait", "4", "--docker-timeout", "15", "--heartbeat", "30"]
    for h in HOSTS:
        identities.agent(h)
    made = {h: Agent(h, dockers[h].url, ",".join(cluster.urls), stack_dir / f"chaos-agent-{h}", extra,
                     auth=identities) for h in HOSTS}
    for a in made.values():
        a.start(wait=False)
    for a in made.values():
        a.wait_ready(90)  # the cluster elects its JetStream leaders in its own time
    yield made
    for a in made.values():
        a.stop()


async def _quiet(exc: Exception) -> None:
    """Disconnects are the point of this test; the test reports what matters."""


@pytest_asyncio.fixture(loop_scope="session")
async def nc(cluster: NatsCluster, identities: Identities) -> AsyncIterator[Client]:
    """A connection that outlives any one node (AgentClient's does not reconnect), as the tests' admin: it reads
    the audit stream and the consumers; the commands it publishes are signed by the operator."""
    conn = await identities.nats(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.5, ping_interval=5,
                                 connect_timeout=2, error_cb=_quiet)
    yield conn
    await conn.close()


@dataclass
class Sent:
    id: str
    host: str
    op: str
    body: dict[str, Any]


@dataclass
class World:
    """What the test did and what it saw, as it went."""

    sent: dict[str, Sent] = field(default_factory=dict)
    source_digest: dict[tuple[str, str], str] = field(default_factory=dict)
    done_backups: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


async def publish_command(nc: Client, cmd: Sent, signer: Signer) -> None:
    """A durable command, signed and published until JetStream acks it; the same Nats-Msg-Id makes every retry
    safe."""
    js, data = nc.jetstream(), msgspec.json.encode({**cmd.body, "id": cmd.id})
    subject = f"vol.cmd.{cmd.host}.{cmd.op}"
    headers = {"Nats-Msg-Id": cmd.id, **signer.headers(subject, data, cmd.id)}
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while True:
        try:
            await js.publish(subject, data, headers=headers, timeout=5)
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            if loop.time() > end:
                raise
            await asyncio.sleep(0.5)


async def read_outcomes(nc: Client) -> list[Reply]:
    """Every message on VOL_RES so far, in order."""
    js = nc.jetstream()
    last = (await js.stream_info("VOL_RES")).state.last_seq
    replies: list[Reply] = []
    if not last:
        return replies
    sub = await js.subscribe("vol.res.>", ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            replies.append(msgspec.json.decode(msg.data, type=Reply))
            if msg.metadata.sequence.stream >= last:
                return replies
    finally:
        await sub.unsubscribe()


async def consumers_idle(nc: Client) -> bool:
    """No durable command waits for an agent, nor is delivered and unacked: no outcome can still come."""
    js = nc.jetstream()
    for h in HOSTS:
        info = await js.consumer_info("VOL_CMD", f"agent_{h}")
        if info.num_pending or info.num_ack_pending:
            return False
    return True


def fill_source(root: Path, rng: random.Random) -> None:
    (root / "data.bin").write_bytes(rng.randbytes(rng.randrange(50_000, 400_000)))
    (root / "notes.txt").write_text("line\n" * rng.randrange(100, 5000))
    (root / "sub").mkdir()
    (root / "sub" / "small").write_bytes(rng.randbytes(100))
    os.symlink("../notes.txt", root / "sub" / "link")
    os.chmod(root / "sub" / "small", 0o640)


class Chaos:
    """Faults from a seeded generator, overlapping: at most one per agent, dockerd or the cluster at a time, and
    one NATS node down at most (the cluster keeps its quorum)."""

    def __init__(self, rng: random.Random, cluster: NatsCluster, dockers: dict[str, Dockerd],
                 agents: dict[str, Agent], world: World) -> None:
        self.rng, self.cluster, self.dockers, self.agents, self.world = rng, cluster, dockers, agents, world
        self.busy: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        kinds = ["agent", "nats", "docker"]
        self.rng.shuffle(kinds)  # each kind at least once, then at random
        while loop.time() < until:
            kind = kinds.pop() if kinds else self.rng.choice(["agent", "nats", "docker"])
            target = "nats" if kind == "nats" else f"{kind}:{self.rng.choice(HOSTS)}"
            if target not in self.busy:
                self.busy.add(target)
                self.tasks.append(asyncio.create_task(self._fault(kind, target)))
            await asyncio.sleep(self.rng.uniform(1.5, 4.0))
        await asyncio.gather(*self.tasks)

    async def _fault(self, kind: str, target: str) -> None:
        pause = self.rng.uniform(0.3, 3.0)
        self.world.faults.append(f"{target} {pause:.1f}s")
        try:
            if kind == "agent":
                agent = self.agents[target.split(":")[1]]
                agent.signal(signal.SIGKILL)
                await asyncio.to_thread(agent.wait, 10)
                await asyncio.sleep(pause)
                agent.start(wait=False)
                await asyncio.to_thread(agent.wait_ready, 90)
            elif kind == "nats":
                node = self.rng.randrange(self.cluster.size)
                self.cluster.kill_node(node)
                await asyncio.sleep(pause)
                await asyncio.to_thread(self.cluster.start_node, node)
                await asyncio.sleep(5)  # let it catch up before another node may go
            else:
                docker = self.dockers[target.split(":")[1]]
                await asyncio.to_thread(docker.stop)
                await asyncio.sleep(pause / 3)
                await asyncio.to_thread(docker.start)
        finally:
            self.busy.discard(target)


async def workload(nc: Client, rng: random.Random, world: World, until: float, signer: Signer) -> None:
    """Durable creates, backups (local and nats stores) and restores of backups reported done, at random."""
    loop = asyncio.get_running_loop()
    n = 0
    while loop.time() < until:
        n += 1
        host, roll = rng.choice(HOSTS), rng.random()
        usable = [b for b in world.done_backups if b["store"] == "nats" or b["host"] == host]
        if roll < 0.3 or (roll >= 0.65 and not usable):
            cmd = Sent(f"create-{n}", host, "create", {"name": f"c{n}", "labels": {"n": str(n)}})
        elif roll < 0.65:
            src = f"src-{host[-1]}-{rng.randrange(SOURCES)}"
            cmd = Sent(f"backup-{n}", host, "backup", {"volume": src, "store": rng.choice(["local", "nats"])})
        else:
            backup = rng.choice(usable)
            cmd = Sent(f"restore-{n}", host, "restore", {"backup_id": backup["backup_id"], "volume": f"r{n}"})
        world.sent[cmd.id] = cmd
        await publish_command(nc, cmd, signer)
        await asyncio.sleep(rng.uniform(0.1, 0.4))


async def test_faults_together_every_command_gets_one_final_outcome_that_the_hosts_match(
    nc: Client, cluster: NatsCluster, dockers: dict[str, Dockerd], agents: dict[str, Agent], identities: Identities,
) -> None:
    rng, world = random.Random(SEED), World()
    client = AgentClient(nc, signer=identities.operator)
    for h in HOSTS:
        for i in range(SOURCES):
            name = f"src-{h[-1]}-{i}"
            assert (await client.request(h, "create", {"name": name}, timeout=30)).ok
            fill_source(mountpoint(dockers[h], name), rng)
            digest = await client.request(h, "digest", {"volume": name}, timeout=30)
            assert digest.ok, digest.error
            world.source_digest[(h, name)] = digest.result["sha256"]  # type: ignore[index]

    async def watch(msg: Any) -> None:  # live and best effort: which backups can be restored already
        reply = msgspec.json.decode(msg.data, type=Reply)
        if reply.ok and reply.id in world.sent and reply.op == "backup":
            world.done_backups.append(reply.result)  # type: ignore[arg-type]

    live = await nc.subscribe("vol.res.*.backup", cb=watch)
    loop = asyncio.get_running_loop()
    until = loop.time() + CHAOS_S
    chaos = Chaos(random.Random(SEED + 1), cluster, dockers, agents, world)
    await asyncio.gather(workload(nc, rng, world, until, identities.operator), chaos.run(until))
    await live.unsubscribe()

    # Settle: wait for the markers, never for a fixed time. Every command has an outcome on the stream, and no
    # command is pending or unacked any more (nothing can be delivered again, so nothing more can be published).
    replies: list[Reply] = []
    end = loop.time() + SETTLE_S
    while loop.time() < end:
        try:
            replies = await read_outcomes(nc)
            if set(world.sent) <= {r.id for r in replies} and await consumers_idle(nc):
                break
        except (nats.errors.Error, nats.js.errors.Error):
            pass  # the cluster is still settling after the last fault
        await asyncio.sleep(1)
    replies = await read_outcomes(nc)
    mine = [r for r in replies if r.id in world.sent]
    counts = collections.Counter(r.id for r in mine)
    report = f"seed {SEED}; faults: {world.faults}; {len(world.sent)} commands"
    missing = sorted(set(world.sent) - set(counts))
    assert not missing, f"no outcome on vol.res for {missing[:10]}; {report}"
    repeated = {i: [r.error.code if r.error else "ok" for r in mine if r.id == i] for i, c in counts.items() if c > 1}
    assert repeated == {}, f"more than one outcome on vol.res: {repeated}; {report}"
    failed = [(r.id, r.error.code, r.error.message) for r in mine if r.error is not None]
    assert failed == [], f"{failed}; {report}"

    # The hosts match the outcomes.
    outcome = {r.id: r.result or {} for r in mine}
    volumes = {h: set(dockers[h].docker("volume", "ls", "-q").split()) for h in HOSTS}
    catalog = {h: {b["backup_id"]: b for b in (await client.request(h, "backups", {}, timeout=30)).result["backups"]}  # type: ignore[index]
               for h in HOSTS}
    backups: dict[str, tuple[str, dict[str, Any]]] = {}  # backup id -> (the source's host, its record)
    for cmd in world.sent.values():
        result = outcome[cmd.id]
        if cmd.op == "create":
            assert cmd.body["name"] in volumes[cmd.host], cmd
        elif cmd.op == "backup":
            assert result["backup_id"] in catalog[cmd.host], cmd
            backups[result["backup_id"]] = (cmd.host, result)
    # Every backup reported done restores equal to its source: the restores done under faults, then the rest.
    restored: set[str] = set()
    for cmd in world.sent.values():
        if cmd.op == "restore":
            origin, record = backups[cmd.body["backup_id"]]
            got = await client.request(cmd.host, "digest", {"volume": cmd.body["volume"]}, timeout=30)
            assert got.ok and got.result["sha256"] == world.source_digest[(origin, record["volume"])], cmd  # type: ignore[index]
            restored.add(cmd.body["backup_id"])
    for n, (backup_id, (origin, record)) in enumerate(sorted(backups.items())):
        if backup_id in restored:
            continue
        target_host = rng.choice(HOSTS) if record["store"] == "nats" else origin
        target = f"check-{n}"
        got = await client.request(target_host, "restore", {"backup_id": backup_id, "volume": target}, timeout=60)
        assert got.ok, (backup_id, got.error)
        got = await client.request(target_host, "digest", {"volume": target}, timeout=30)
        assert got.ok and got.result["sha256"] == world.source_digest[(origin, record["volume"])], backup_id  # type: ignore[index]

    # Nothing half-written is left, and the agents are alive and answering.
    partial = [p for a in agents.values() for p in a.data_dir.rglob("*.partial")]
    assert partial == [], partial
    for h, a in agents.items():
        assert a.proc is not None and a.proc.poll() is None, f"agent {h} exited"
        assert (await client.request(h, "list", {}, timeout=30)).ok
    print(f"chaos: {report}; {len(backups)} backups, {len(restored)} restored under faults")
