"""Volume lifecycle figures: create+remove through the agent, the raw Engine API and the docker CLI, with the
CPU each process spends per create+remove (from /proc: less moved by other load than wall time);
64 concurrent inspects against 64 sequential ones.

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/lifecycle.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiodocker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procstats import cpu_s
from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsServer
from volumectl.client import AgentClient

TARGET_CPU_MS = 3.0  # agent CPU per create+remove (issue 14)
TARGET_OVER_MS = 1.0  # agent p50 over the raw API's plus the bus round trip


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.2f} ms"



class CpuMeter:
    """CPU seconds that processes spend inside `with meter:` blocks, summed over the blocks."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.spent = dict.fromkeys(pids, 0.0)
        self._at: dict[str, float] = {}

    def __enter__(self) -> None:
        self._at = {name: cpu_s(pid) for name, pid in self.pids.items()}

    def __exit__(self, *_: object) -> None:
        for name, pid in self.pids.items():
            self.spent[name] += cpu_s(pid) - self._at[name]

    def per_op_ms(self, name: str, ops: int) -> float:
        return self.spent[name] / ops * 1000


async def through_agent(client: AgentClient, host: str, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        t = time.perf_counter()
        r1 = await client.request(host, "create", {"name": f"bench-a{i}"})
        r2 = await client.request(host, "remove", {"name": f"bench-a{i}"})
        times.append(time.perf_counter() - t)
        assert r1.ok and r2.ok, (r1.error, r2.error)
    return times


async def through_api(docker_url: str, rounds: int) -> list[float]:
    times = []
    async with aiodocker.Docker(url=docker_url) as docker:
        await docker.version()
        for i in range(rounds):
            t = time.perf_counter()
            v = await docker.volumes.create({"Name": f"bench-r{i}"})
            await v.delete()
            times.append(time.perf_counter() - t)
    return times


def through_cli(d: Dockerd, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        t = time.perf_counter()
        subprocess.run(["docker", "-H", d.url, "volume", "create", f"bench-c{i}"], check=True, capture_output=True)
        subprocess.run(["docker", "-H", d.url, "volume", "rm", f"bench-c{i}"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times


ECHO = textwrap.dedent("""
    import asyncio, sys, nats
    async def main():
        nc = await nats.connect(sys.argv[1])
        async def echo(m):
            await m.respond(m.data)
        await nc.subscribe("bench.echo", cb=echo)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


async def bus_floor(client: AgentClient, nats_url: str, rounds: int) -> list[float]:
    """Two request/replies to a do-nothing responder in another process: what the bus itself costs."""
    echo = subprocess.Popen([sys.executable, "-c", ECHO, nats_url], stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None and echo.stdout.readline() == b"ready\n"
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            await client.nc.request("bench.echo", b'{"name": "x"}', timeout=5)
            await client.nc.request("bench.echo", b'{"name": "x"}', timeout=5)
            times.append(time.perf_counter() - t)
        return times
    finally:
        echo.kill()
        echo.wait()


async def inspects(client: AgentClient, host: str) -> tuple[float, float]:
    await client.request(host, "create", {"name": "bench-shared"})
    t = time.perf_counter()
    replies = await asyncio.gather(*(client.request(host, "inspect", {"name": "bench-shared"}) for _ in range(64)))
    concurrent = time.perf_counter() - t
    assert all(r.ok for r in replies)
    t = time.perf_counter()
    for _ in range(64):
        await client.request(host, "inspect", {"name": "bench-shared"})
    sequential = time.perf_counter() - t
    return concurrent, sequential


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--cli-rounds", type=int, default=30)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vb") as tmp:
        d = Dockerd(Path(tmp, "dk")).start()
        n = NatsServer(Path(tmp, "nats")).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)  # plain NATS, as the earlier figures
        agent = Agent("bench", d.url, n.url, Path(tmp, "agent"), auth=ids).start()
        try:
            client = await AgentClient.connect([n.url], signer=ids.operator)
            await through_agent(client, "bench", 20)  # warm up both sides
            await through_api(d.url, 20)
            # Interleaved in blocks, so drift on the machine (page cache, fsync) hits both alike.
            assert agent.proc is not None and d.proc is not None
            api: list[float] = []
            via_agent: list[float] = []
            api_cpu, agent_cpu = CpuMeter(dockerd=d.proc.pid), CpuMeter(agent=agent.proc.pid, dockerd=d.proc.pid)
            load_before = os.getloadavg()[0]
            for _ in range(10):
                with api_cpu:
                    api += await through_api(d.url, a.rounds // 10)
                with agent_cpu:
                    via_agent += await through_agent(client, "bench", a.rounds // 10)
            load_after = os.getloadavg()[0]
            floor = await bus_floor(client, n.url, a.rounds)
            cli = through_cli(d, a.cli_rounds)
            conc, seq = await inspects(client, "bench")
            await client.close()
        finally:
            agent.stop()
            n.stop()
            d.stop()
    overhead = (statistics.median(via_agent) - statistics.median(api)) * 1000
    beyond = overhead - statistics.median(floor) * 1000
    n_api, n_agent = len(api), len(via_agent)
    agent_ms = agent_cpu.per_op_ms("agent", n_agent)
    print(f"create+remove p50, {a.rounds} rounds interleaved (CLI {a.cli_rounds}); load average {load_before:.2f} "
          f"before, {load_after:.2f} after ({os.cpu_count()} cores, shared):")
    print(f"  raw Engine API (aiodocker)  {ms(api)}   dockerd CPU {api_cpu.per_op_ms('dockerd', n_api):5.2f} ms/op")
    print(f"  through volume-agent        {ms(via_agent)}   dockerd CPU "
          f"{agent_cpu.per_op_ms('dockerd', n_agent):5.2f} ms/op")
    print(f"  docker CLI                  {ms(cli)}")
    print(f"  bus round trip: 2 NATS request/replies to an echo process {ms(floor)}")
    print(f"  agent p50 - raw API p50 - bus round trip: {beyond:+.2f} ms (target <= {TARGET_OVER_MS:g} ms: "
          f"{'met' if beyond <= TARGET_OVER_MS else 'NOT met'})")
    print(f"  agent CPU per create+remove: {agent_ms:.2f} ms (target <= {TARGET_CPU_MS:g} ms: "
          f"{'met' if agent_ms <= TARGET_CPU_MS else 'NOT met'})")
    print(f"64 inspects: concurrent {conc * 1000:.1f} ms, sequential {seq * 1000:.1f} ms ({seq / conc:.1f}x)")


if __name__ == "__main__":
    asyncio.run(main())
