"""Volume lifecycle figures: create+remove through the agent, the raw Engine API and the docker CLI;
64 concurrent inspects against 64 sequential ones.

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/lifecycle.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiodocker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsServer
from volumectl.client import AgentClient


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.2f} ms"


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
            api: list[float] = []
            via_agent: list[float] = []
            for _ in range(10):
                api += await through_api(d.url, a.rounds // 10)
                via_agent += await through_agent(client, "bench", a.rounds // 10)
            floor = await bus_floor(client, n.url, a.rounds)
            cli = through_cli(d, a.cli_rounds)
            conc, seq = await inspects(client, "bench")
            await client.close()
        finally:
            agent.stop()
            n.stop()
            d.stop()
    overhead = (statistics.median(via_agent) - statistics.median(api)) * 1000
    print(f"create+remove p50, {a.rounds} rounds (CLI {a.cli_rounds}):")
    print(f"  raw Engine API (aiodocker)  {ms(api)}")
    print(f"  through volume-agent        {ms(via_agent)}   (+{overhead:.2f} ms over the raw API; target <= 1 ms)")
    print(f"  docker CLI                  {ms(cli)}")
    print(f"  bus floor: 2 NATS request/replies to an echo process {ms(floor)}")
    print(f"64 inspects: concurrent {conc * 1000:.1f} ms, sequential {seq * 1000:.1f} ms ({seq / conc:.1f}x)")


if __name__ == "__main__":
    asyncio.run(main())
