"""Figures of the event-driven agent and the fleet:

1. stop-to-backup latency: from Docker's `die` of a labelled container to the agent's `backup.completed`,
   for a small volume; the overhead is that minus the backup's own duration (target: under 1 s).
2. inventory snapshot build time and size for 2,000 volumes (target: under 200 ms).
3. the shared (nats) store against the local store: backup and restore of the same 768 MiB volume.

Starts its own private dockerd, nats-server and agent (root and docker.io needed: scripts/test installs them).
Run: .venv/bin/python bench/fleet.py [--volumes 2000] [--mib 768] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backup.local_store import LocalStore
from agent.backup.stores import Stores
from agent.docker import DockerEngine
from agent.events.inventory import Inventory
from tests.identities import Identities
from tests.stack import BUSYBOX_IMAGE, Agent, Dockerd, NatsServer
from volumectl.client import AgentClient

HOST = "bench"


class NoSink:
    async def inventory_put(self, values: Mapping[str, bytes]) -> None: ...

    async def inventory_delete(self, keys: Iterable[str]) -> None: ...

    async def inventory_get(self, key: str) -> bytes | None:
        return None


async def stop_latency(d: Dockerd, client: AgentClient, rounds: int) -> tuple[list[float], list[float]]:
    await client.request(HOST, "create", {"name": "small"})
    mp = Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "small").strip())
    (mp / "state.bin").write_bytes(os.urandom(1 << 20))
    cid = d.docker("run", "-d", "--network", "none", "--label", "volume-agent.backup.on-stop=true",
                   "-v", "small:/data", BUSYBOX_IMAGE, "sleep", "3600").strip()
    events = await client.nc.subscribe(f"vol.evt.{HOST}.backup.completed")
    await client.nc._flush_pending(force_flush=True)
    await client.nc.flush()
    totals, own = [], []
    for _ in range(rounds):
        d.docker("kill", cid)  # the die comes at once: no stop timeout in the figure
        finished = d.docker("inspect", "-f", "{{.State.FinishedAt}}", cid).strip()  # RFC 3339, nanoseconds
        died_ns = int(datetime.fromisoformat(finished[:26] + "+00:00").timestamp() * 1e9)
        evt = msgspec.json.decode((await events.next_msg(timeout=30)).data)
        got_ns = time.time_ns()
        rec = await client.request(HOST, "backups", {"volume": "small"})
        record = next(b for b in rec.result["backups"] if b["backup_id"] == evt["backup_id"])  # type: ignore[index]
        totals.append((got_ns - died_ns) / 1e9)
        own.append(record["duration_s"])
        d.docker("start", cid)
        await asyncio.sleep(0.3)
    await events.unsubscribe()
    return totals, own


async def inventory_build(d: Dockerd, n: int) -> tuple[float, float, int]:
    engine = DockerEngine(d.url)
    await engine.start()
    try:
        sem = asyncio.Semaphore(32)

        async def make(i: int) -> None:
            async with sem:
                await engine.volume_create({"Name": f"inv-{i:05d}", "Labels": {"team": f"t{i % 20}",
                                                                                "app": f"app-{i % 100}"}})

        await asyncio.gather(*(make(i) for i in range(n)))
        for i in range(0, 200, 10):  # some volumes in use, as on a real host
            d.docker("create", "--network", "none", "-v", f"inv-{i:05d}:/d", BUSYBOX_IMAGE)
        with tempfile.TemporaryDirectory() as tmp:
            inv = Inventory(engine, Stores(LocalStore(Path(tmp))), NoSink(), HOST, heartbeat_s=60, sizes_every_s=0)
            await inv.on_resync()
            times, size = [], 0
            for _ in range(10):
                t = time.perf_counter()
                data = inv.encode(await inv.snapshot())
                times.append(time.perf_counter() - t)
                size = len(data)
        return statistics.median(times) * 1000, max(times) * 1000, size
    finally:
        await engine.stop()


async def store_throughput(d: Dockerd, client: AgentClient, mib: int) -> list[tuple[str, float, float]]:
    await fill_big(d, client, mib)
    return await backup_restore(client)


async def fill_big(d: Dockerd, client: AgentClient, mib: int) -> None:
    await client.request(HOST, "create", {"name": "big"})
    mp = Path(d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", "big").strip())
    with open(mp / "random.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


async def backup_restore(client: AgentClient) -> list[tuple[str, float, float]]:
    """Back up the volume `big` to each store and restore it to `big-<store>`: (store, seconds, seconds)."""
    rows = []
    for store in ("local", "nats"):
        t = time.perf_counter()
        rec = await client.request(HOST, "backup", {"volume": "big", "store": store}, timeout=1200)
        b = time.perf_counter() - t
        assert rec.ok, rec.error
        t = time.perf_counter()
        res = await client.request(HOST, "restore", {"backup_id": rec.result["backup_id"],  # type: ignore[index]
                                                     "volume": f"big-{store}"}, timeout=1200)
        r = time.perf_counter() - t
        assert res.ok, res.error
        rows.append((store, b, r))
        await client.request(HOST, "forget", {"backup_id": rec.result["backup_id"]})  # type: ignore[index]
    return rows


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--volumes", type=int, default=2000)
    p.add_argument("--mib", type=int, default=768)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--max-payload", default=None, help='the nats-server max_payload, e.g. 8MB (default: 1 MiB)')
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vfl", dir="/var/tmp") as tmp:
        d = Dockerd(Path(tmp, "dk")).start()
        d.import_busybox()
        n = NatsServer(Path(tmp, "nats"), max_payload=a.max_payload).start()
        ids = Identities.make(Path(tmp, "keys"), tls=False)  # plain NATS, as the earlier figures
        agent = Agent(HOST, d.url, n.url, Path(tmp, "agent"), auth=ids).start()
        client = await AgentClient.connect([n.url], signer=ids.operator)
        try:
            totals, own = await stop_latency(d, client, a.rounds)
            rows = await store_throughput(d, client, a.mib)
            agent.stop()
            build_med, build_max, size = await inventory_build(d, a.volumes)
        finally:
            await client.close()
            agent.stop()
            n.stop()
            d.stop()
    over = [t - o for t, o in zip(totals, own, strict=True)]
    med_total, max_total = statistics.median(totals) * 1000, max(totals) * 1000
    med_own, med_over, max_over = statistics.median(own) * 1000, statistics.median(over) * 1000, max(over) * 1000
    print(f"stop-to-backup, 1 MiB volume, {a.rounds} stops: die -> backup.completed median {med_total:.0f} ms "
          f"(max {max_total:.0f}); the backup itself {med_own:.0f} ms; overhead median {med_over:.0f} ms, "
          f"max {max_over:.0f} ms (target < 1000)")
    print(f"inventory of {a.volumes} volumes: build+encode median {build_med:.1f} ms, max {build_max:.1f} ms "
          f"(target < 200); {size / 1024:.0f} KiB")
    print(f"{a.mib} MiB of random bytes (zstd), nats-server max_payload {a.max_payload or '1MB'}; seconds, MiB/s:")
    for store, b, r in rows:
        print(f"  {store:6} backup {b:6.2f} ({a.mib / b:5.0f} MiB/s)   restore {r:6.2f} ({a.mib / r:5.0f} MiB/s)")


if __name__ == "__main__":
    asyncio.run(main())
