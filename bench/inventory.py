"""Figures of the inventory of a big host (issue 14: 20,000 volumes):

1. the Engine's side at that size: `GET /volumes` and `/system/df` (the sizes);
2. build + publish of the whole inventory (every chunk and the head), and of a change of one volume (its chunk and
   the head), measured in this process on the agent's own Inventory and Bus against the real dockerd and
   nats-server;
3. end to end on a real agent process: from a volume made through the Engine API to the head that counts it on
   `vol.inv.<host>.head` (Docker's event, the 250 ms debounce, the inspect, the chunk and the head);
4. `volumectl fleet` and `volumectl inventory` against that agent: how many volumes they show, and how long they take.

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/inventory.py [--volumes 20000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backup.local_store import LocalStore
from agent.backup.stores import Stores
from agent.bus import Bus
from agent.config import Settings
from agent.docker import DockerEngine
from agent.events.inventory import Inventory
from contracts import InventoryHead
from tests.identities import Identities
from tests.stack import Agent, Dockerd, NatsServer, venv_bin
from volumectl.client import AgentClient

HOST, INPROC = "bench", "bench-inproc"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def make_volumes(engine: DockerEngine, n: int) -> float:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            await engine.volume_create({"Name": f"inv-{i:05d}", "Labels": {"team": f"t{i % 20}",
                                                                            "app": f"app-{i % 100}"}})

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t


async def timed(f: Any) -> float:
    t = time.perf_counter()
    await f()
    return time.perf_counter() - t


async def engine_figures(engine: DockerEngine) -> tuple[float, float]:
    lists = [await timed(lambda: engine.volume_list({})) for _ in range(3)]
    df = await timed(engine.system_df)
    return statistics.median(lists), df


async def in_process(engine: DockerEngine, url: str, data: Path, rounds: int) -> dict[str, Any]:
    bus = Bus(Settings(nats_urls=[url], docker_url=engine.url, host_id=INPROC, data_dir=data), [url])
    await bus.start()
    inv = Inventory(engine, Stores(LocalStore(data / "backups")), bus, INPROC, heartbeat_s=60, sizes_every_s=0)
    try:
        await inv.on_resync()
        full, update = [], []
        for _ in range(3):
            inv.chunks.forget_written()  # every chunk written again, as at start
            t = time.perf_counter()
            async with inv._lock:
                await inv._update(relist=True)
            update.append(time.perf_counter() - t)
            t = time.perf_counter()
            plan = await inv.publish(relist=True)
            full.append(time.perf_counter() - t)
        full_bytes = sum(map(len, plan.chunks.values()))
        one, written, one_bytes = [], set(), []
        for i in range(rounds):
            name = f"inv-change-{i}"
            await engine.volume_create({"Name": name})
            await inv.on_docker_event({"Type": "volume", "Action": "create", "Actor": {"ID": name}})
            t = time.perf_counter()
            plan = await inv.publish()
            one.append(time.perf_counter() - t)
            written.add(len(plan.chunks))
            one_bytes.append(sum(map(len, plan.chunks.values())) + sum(map(len, plan.last.values())))
        return {"chunks": plan.n, "full": statistics.median(full), "update": statistics.median(update),
                "full_bytes": full_bytes, "one": statistics.median(one), "one_max": max(one),
                "written": sorted(written), "one_bytes": statistics.median(one_bytes)}
    finally:
        await bus.stop()


async def end_to_end(engine: DockerEngine, client: AgentClient, n: int, rounds: int) -> list[float]:
    """From a volume made or removed through the Engine API to the head on `vol.inv.<host>.head` that counts it."""
    sub = await client.nc.subscribe(f"vol.inv.{HOST}.head")
    await client.nc._flush_pending(force_flush=True)
    await client.nc.flush()
    times, count = [], n

    async def head_with(count: int) -> None:
        while True:
            head = msgspec.json.decode((await sub.next_msg(timeout=30)).data, type=InventoryHead)
            if head.volume_count == count:
                return

    try:
        for i in range(rounds):
            await asyncio.sleep(1.5)  # past the agent's one snapshot a second: the debounce alone
            name = f"e2e-{i // 2}"
            t = time.perf_counter()
            if i % 2 == 0:
                await engine.volume_create({"Name": name})
                count += 1
            else:
                await engine.volume_remove(name, force=False)
                count -= 1
            await head_with(count)
            times.append(time.perf_counter() - t)
    finally:
        await sub.unsubscribe()
    return times


def volumectl(ids: Identities, url: str, *args: str) -> tuple[float, Any]:
    t = time.perf_counter()
    out = subprocess.run([venv_bin("volumectl"), "--nats", url, "--host", HOST, "--json", *args],
                         capture_output=True, text=True, timeout=600, env=ids.env())
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"volumectl {' '.join(args)} failed: {out.stderr.strip()}")
    return took, json.loads(out.stdout)


async def wait_for_agent(client: AgentClient, n: int) -> float:
    t = time.perf_counter()
    while True:
        mine = [s for s in await client.inventories() if s.host == HOST]
        if mine and len(mine[0].volumes) >= n and mine[0].sizes_at:
            return time.perf_counter() - t
        await asyncio.sleep(0.5)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--volumes", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vin", dir="/var/tmp") as tmp:
        d = Dockerd(Path(tmp, "dk")).start()
        n = NatsServer(Path(tmp, "nats")).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)
        engine = DockerEngine(d.url)
        await engine.start()
        agent = None
        client = await AgentClient.connect([n.url], signer=ids.operator)
        try:
            made = await make_volumes(engine, a.volumes)
            list_s, df_s = await engine_figures(engine)
            inproc = await in_process(engine, n.url, Path(tmp, "inproc"), a.rounds)
            for i in range(a.rounds):  # the in-process rounds' volumes: the agent starts from a.volumes
                await engine.volume_remove(f"inv-change-{i}", force=False)
            agent = Agent(HOST, d.url, n.url, Path(tmp, "agent"), auth=ids).start()
            settled = await wait_for_agent(client, a.volumes)
            e2e = await end_to_end(engine, client, a.volumes, a.rounds)
            fleet_s, fleet = volumectl(ids, n.url, "fleet")
            fleet_count = next(len(s["volumes"]) for s in fleet if s["host"] == HOST)
            inv_s, inv = volumectl(ids, n.url, "inventory")
            inv_count = len(inv["result"]["volumes"])
            log = agent.log()
        finally:
            await client.close()
            if agent is not None:
                agent.stop()
            await engine.stop()
            n.stop()
            d.stop()
    expected = a.volumes + (a.rounds % 2)
    print(f"{a.volumes} plain volumes made through the Engine API in {made:.1f} s "
          f"({made / a.volumes * 1000:.2f} ms each)")
    print(f"Engine at {a.volumes} volumes: GET /volumes {ms(list_s)} (median of 3), /system/df (sizes) {ms(df_s)}")
    print(f"whole inventory, {inproc['chunks']} chunks, {inproc['full_bytes'] / 2**20:.1f} MiB: build+publish "
          f"{ms(inproc['full'])} (median of 3; list+build alone {ms(inproc['update'])})")
    print(f"one volume made: build+publish {inproc['one'] * 1000:.1f} ms median, {inproc['one_max'] * 1000:.1f} ms max "
          f"of {a.rounds}; chunks written {inproc['written']}, {inproc['one_bytes'] / 1024:.0f} KiB with the head")
    print(f"end to end on the agent (Engine API -> head on vol.inv.{HOST}.head, 250 ms debounce included): median "
          f"{ms(statistics.median(e2e))}, max {ms(max(e2e))} of {a.rounds} (target < 500 ms)")
    print(f"agent start to a whole inventory with sizes in the bucket: {settled:.1f} s after ready")
    print(f"volumectl fleet: {fleet_count} of {expected} volumes of {HOST} in {fleet_s:.2f} s; "
          f"volumectl inventory: {inv_count} in {inv_s:.2f} s")
    print(f"agent log: {log.count('inventory.not_published')} inventory.not_published, "
          f"{log.count('command.reply_too_large')} reply_too_large")


if __name__ == "__main__":
    asyncio.run(main())
